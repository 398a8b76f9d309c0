SELECT d.parent, d.name, d.ino FROM dentries d
WHERE NOT EXISTS (SELECT 1 FROM inodes i WHERE i.ino = d.ino)
   OR NOT EXISTS (SELECT 1 FROM inodes p WHERE p.ino = d.parent AND p.kind = 16384)
