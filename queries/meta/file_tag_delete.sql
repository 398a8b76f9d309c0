DELETE FROM file_tags WHERE ino = :ino AND tag = :tag
