-- One row per tag held by a file (only files the caller can reach).
CREATE TEMP VIEW tags AS
SELECT f.ino AS id, f.tag AS tag, f.value AS value
FROM main.file_tags f
WHERE NOT qfs_restricted()
   OR EXISTS (SELECT 1 FROM main.dentries d WHERE d.ino = f.ino AND qfs_visible(d.parent))
