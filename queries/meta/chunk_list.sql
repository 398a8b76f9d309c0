SELECT c.idx, c.hash, b.size, b.loc, b.data FROM chunks c JOIN blobs b ON b.hash = c.hash WHERE c.ino = :ino
