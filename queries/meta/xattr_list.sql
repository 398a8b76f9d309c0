SELECT name FROM xattrs WHERE ino = :ino ORDER BY name
