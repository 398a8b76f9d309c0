SELECT t.name, (SELECT count(*) FROM file_tags f WHERE f.tag = t.name)
FROM tags t
ORDER BY t.name
