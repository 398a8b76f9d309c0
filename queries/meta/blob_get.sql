SELECT size, loc, data FROM blobs WHERE hash = :hash
