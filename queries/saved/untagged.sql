-- Regular files without any tag (a probe of the tag index per file).
SELECT id, path FROM files
WHERE kind = 'file' AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.id = files.id)
