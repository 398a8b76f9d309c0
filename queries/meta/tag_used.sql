SELECT EXISTS (SELECT 1 FROM file_tags WHERE tag = :name)
