SELECT DISTINCT c.ino FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM inodes i WHERE i.ino = c.ino)
