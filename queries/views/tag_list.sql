-- Every tag, with the number of files holding it.
CREATE TEMP VIEW tag_list AS
SELECT t.name AS tag, (SELECT count(*) FROM main.file_tags f WHERE f.tag = t.name) AS files
FROM main.tags t
