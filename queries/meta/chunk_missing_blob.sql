SELECT c.ino, c.idx FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.hash = c.hash)
