-- Every user.* extended attribute of every file, tags included as user.tag.<name>.
CREATE TEMP VIEW xattrs AS
SELECT x.ino AS id, CAST(x.name AS TEXT) AS name, CAST(x.value AS TEXT) AS value
FROM main.xattrs x
UNION ALL
SELECT f.ino, 'user.tag.' || f.tag, COALESCE(f.value, '')
FROM main.file_tags f
