-- Files of 100 MiB or more, largest first.
SELECT id, path FROM files
WHERE kind = 'file' AND size >= 100 * 1024 * 1024
ORDER BY size DESC
