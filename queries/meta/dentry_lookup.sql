SELECT i.ino, i.kind, i.perm, i.uid, i.gid, i.size, i.nlink, i.rdev, i.atime, i.mtime, i.ctime, i.btime FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE d.parent = :parent AND d.name = :name
