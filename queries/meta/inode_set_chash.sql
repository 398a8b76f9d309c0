UPDATE inodes SET chash = :chash WHERE ino = :ino
