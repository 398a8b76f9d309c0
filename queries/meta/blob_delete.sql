DELETE FROM blobs WHERE hash = :hash
