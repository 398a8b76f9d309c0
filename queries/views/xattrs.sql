-- Every user.* extended attribute of every file, tags included as
-- user.tag.<name> (only files the caller can reach).
CREATE TEMP VIEW xattrs AS
SELECT x.ino AS id, CAST(x.name AS TEXT) AS name, CAST(x.value AS TEXT) AS value
FROM main.xattrs x
WHERE NOT qfs_restricted()
   OR EXISTS (SELECT 1 FROM main.dentries d WHERE d.ino = x.ino AND qfs_visible(d.parent))
UNION ALL
SELECT f.ino, 'user.tag.' || f.tag, COALESCE(f.value, '')
FROM main.file_tags f
WHERE NOT qfs_restricted()
   OR EXISTS (SELECT 1 FROM main.dentries d WHERE d.ino = f.ino AND qfs_visible(d.parent))
