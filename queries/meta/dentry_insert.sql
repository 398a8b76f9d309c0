INSERT INTO dentries (parent, name, ino) VALUES (:parent, :name, :ino)
