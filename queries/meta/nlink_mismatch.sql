SELECT i.ino, i.nlink, i.kind,
    (SELECT count(*) FROM dentries d WHERE d.ino = i.ino) AS names,
    (SELECT count(*) FROM dentries d JOIN inodes c ON c.ino = d.ino WHERE d.parent = i.ino AND c.kind = 16384) AS subdirs
FROM inodes i
WHERE i.nlink <> CASE WHEN i.kind = 16384 THEN 2 + (SELECT count(*) FROM dentries d JOIN inodes c ON c.ino = d.ino WHERE d.parent = i.ino AND c.kind = 16384)
                      ELSE (SELECT count(*) FROM dentries d WHERE d.ino = i.ino) END
