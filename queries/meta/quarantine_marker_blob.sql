INSERT INTO blobs (hash, size, refcount, loc, data) SELECT :marker, size, refcount, :loc, NULL FROM blobs WHERE hash = :hash
