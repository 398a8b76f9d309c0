SELECT tag, value FROM file_tags WHERE ino = :ino ORDER BY tag
