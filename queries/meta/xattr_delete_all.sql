DELETE FROM xattrs WHERE ino = :ino
