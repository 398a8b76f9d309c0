SELECT idx, hash FROM chunks WHERE ino = :ino ORDER BY idx
