SELECT hash, size, loc FROM blobs WHERE loc IS NOT NULL
