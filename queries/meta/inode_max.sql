SELECT coalesce(max(ino), 1) FROM inodes
