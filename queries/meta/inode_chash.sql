SELECT chash FROM inodes WHERE ino = :ino
