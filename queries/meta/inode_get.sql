SELECT i.ino, i.kind, i.perm, i.uid, i.gid, i.size, i.nlink, i.rdev, i.atime, i.mtime, i.ctime, i.btime, i.blocks FROM inodes i WHERE i.ino = :ino
