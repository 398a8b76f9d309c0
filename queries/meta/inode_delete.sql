DELETE FROM inodes WHERE ino = :ino
