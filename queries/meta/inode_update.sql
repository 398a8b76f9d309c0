UPDATE inodes SET perm = :perm, uid = :uid, gid = :gid, size = :size, nlink = :nlink,
    atime = :atime, mtime = :mtime, ctime = :ctime, btime = :btime
WHERE ino = :ino
