SELECT hash FROM chunks WHERE ino = :ino
