DELETE FROM tags WHERE name = :name
