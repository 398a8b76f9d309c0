-- Non-empty files whose content also exists in another file, grouped by content.
SELECT id, path FROM files
WHERE kind = 'file' AND size > 0 AND hash IN (
    SELECT hash FROM files WHERE kind = 'file' AND size > 0
    GROUP BY hash HAVING count(DISTINCT id) > 1
)
ORDER BY hash, path
