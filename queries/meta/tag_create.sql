INSERT OR IGNORE INTO tags (name, created) VALUES (:name, :now)
