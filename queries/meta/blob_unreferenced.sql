SELECT hash, loc FROM blobs WHERE refcount <= 0
