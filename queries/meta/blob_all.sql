SELECT hash, size, refcount, loc, data FROM blobs
