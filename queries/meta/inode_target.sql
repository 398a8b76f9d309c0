SELECT target FROM inodes WHERE ino = :ino
