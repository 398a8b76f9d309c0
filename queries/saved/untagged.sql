-- Regular files without any tag.
SELECT id, path FROM files
WHERE kind = 'file' AND id NOT IN (SELECT id FROM tags)
