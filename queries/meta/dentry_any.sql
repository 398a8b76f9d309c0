SELECT EXISTS (SELECT 1 FROM dentries WHERE parent = :parent)
