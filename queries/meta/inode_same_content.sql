SELECT d.parent, d.name, i.ino
FROM inodes i JOIN dentries d ON d.ino = i.ino
WHERE i.chash = :chash AND i.ino <> :ino AND i.nlink > 0 AND i.kind = 32768
ORDER BY i.ino, d.parent, d.name
