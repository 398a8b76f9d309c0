DELETE FROM file_tags WHERE ino = :ino
