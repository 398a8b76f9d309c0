DELETE FROM dentries WHERE parent = :parent AND name = :name
