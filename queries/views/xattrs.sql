-- Every user.* extended attribute of every file, tags included as
-- user.tag.<name> (only files the caller can reach; the value of an
-- ordinary attribute only when the caller may read the file, as getxattr(2)
-- requires).
CREATE TEMP VIEW xattrs AS
SELECT x.ino AS id, CAST(x.name AS TEXT) AS name,
    CASE WHEN qfs_readable(i.uid, i.gid, i.perm) THEN CAST(x.value AS TEXT) END AS value
FROM main.xattrs x JOIN main.inodes i ON i.ino = x.ino
WHERE NOT qfs_restricted()
   OR EXISTS (SELECT 1 FROM main.dentries d WHERE d.ino = x.ino AND qfs_visible(d.parent))
UNION ALL
SELECT f.ino, 'user.tag.' || f.tag, COALESCE(f.value, '')
FROM main.file_tags f
WHERE NOT qfs_restricted()
   OR EXISTS (SELECT 1 FROM main.dentries d WHERE d.ino = f.ino AND qfs_visible(d.parent))
