INSERT INTO inodes (kind, perm, uid, gid, size, nlink, rdev, atime, mtime, ctime, btime, target)
VALUES (:kind, :perm, :uid, :gid, :size, :nlink, :rdev, :atime, :mtime, :ctime, :btime, :target)
