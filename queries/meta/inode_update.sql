UPDATE inodes SET perm = :perm, uid = :uid, gid = :gid, size = :size, nlink = :nlink,
    atime = :atime, mtime = :mtime, ctime = :ctime, btime = :btime, blocks = :blocks,
    chash = coalesce(:chash, chash)
WHERE ino = :ino
