INSERT INTO file_tags (tag, ino, value, placed) VALUES (:tag, :ino, :value, :placed)
ON CONFLICT (tag, ino) DO UPDATE SET value = excluded.value
