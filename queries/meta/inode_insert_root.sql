INSERT INTO inodes (ino, kind, perm, uid, gid, size, nlink, rdev, atime, mtime, ctime, btime)
VALUES (1, :kind, :perm, :uid, :gid, 0, 2, 0, :now, :now, :now, :now)
