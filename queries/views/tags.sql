-- One row per tag held by a file.
CREATE TEMP VIEW tags AS
SELECT f.ino AS id, f.tag AS tag, f.value AS value
FROM main.file_tags f
