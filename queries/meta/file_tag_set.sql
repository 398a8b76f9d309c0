INSERT INTO file_tags (tag, ino, value) VALUES (:tag, :ino, :value)
ON CONFLICT (tag, ino) DO UPDATE SET value = excluded.value, placed = 0
