-- Files changed in the last 7 days, newest first.
SELECT id, path FROM files
WHERE kind = 'file' AND mtime > CAST(strftime('%s', 'now') AS INTEGER) - 7 * 86400
ORDER BY mtime DESC
