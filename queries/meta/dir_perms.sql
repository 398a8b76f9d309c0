-- Every directory with its parent, permission bits and owner (for the
-- reachability rule of query folders: search permission on each ancestor).
SELECT d.ino, d.parent, i.perm, i.uid, i.gid
FROM dentries d JOIN inodes i ON i.ino = d.ino
WHERE i.kind = 16384
