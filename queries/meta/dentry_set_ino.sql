UPDATE dentries SET ino = :ino WHERE parent = :parent AND name = :name
