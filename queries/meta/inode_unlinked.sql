SELECT ino FROM inodes WHERE nlink = 0
