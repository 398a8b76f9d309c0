DELETE FROM chunks WHERE ino = :ino AND idx = :idx
