DELETE FROM chunks WHERE ino = :ino
