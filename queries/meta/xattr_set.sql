INSERT INTO xattrs (ino, name, value) VALUES (:ino, :name, :value)
ON CONFLICT (ino, name) DO UPDATE SET value = excluded.value
