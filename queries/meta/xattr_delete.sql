DELETE FROM xattrs WHERE ino = :ino AND name = :name
