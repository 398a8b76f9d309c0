INSERT INTO chunks (ino, idx, hash) VALUES (:ino, :idx, :hash)
ON CONFLICT (ino, idx) DO UPDATE SET hash = excluded.hash
