SELECT b.hash, b.refcount, COALESCE(c.n, 0) FROM blobs b
LEFT JOIN (SELECT hash, count(*) AS n FROM chunks GROUP BY hash) c ON c.hash = b.hash
WHERE b.refcount <> COALESCE(c.n, 0)
