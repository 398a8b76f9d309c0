INSERT INTO blobs (hash, size, refcount, loc, data) VALUES (:hash, :size, 1, :loc, :data)
