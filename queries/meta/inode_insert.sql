INSERT INTO inodes (kind, perm, uid, gid, size, nlink, rdev, atime, mtime, ctime, btime, target, chash)
VALUES (:kind, :perm, :uid, :gid, :size, :nlink, :rdev, :atime, :mtime, :ctime, :btime, :target, :chash)
