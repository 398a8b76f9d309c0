SELECT tag, value, placed FROM file_tags WHERE ino = :ino ORDER BY tag
