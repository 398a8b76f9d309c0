SELECT parent, name FROM dentries WHERE ino = :ino ORDER BY parent, name
