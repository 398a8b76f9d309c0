INSERT INTO inodes (ino, kind, perm, uid, gid, size, nlink, rdev, atime, mtime, ctime, btime, target, chash)
VALUES (:ino, :kind, :perm, :uid, :gid, :size, :nlink, :rdev, :atime, :mtime, :ctime, :btime, :target, :chash)
