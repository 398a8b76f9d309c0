SELECT q.hash, q.marker, q.size, q.loc, q.clusters, q.reason, q.created, b.refcount FROM quarantine q LEFT JOIN blobs b ON b.hash = q.marker ORDER BY q.created, q.hash
