SELECT parent FROM dentries WHERE ino = :ino
