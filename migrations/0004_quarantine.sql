-- Why: `queryfs fsck --repair` quarantines blobs whose cluster chain is
-- damaged (broken, looping, too short, cross-linked, or past the end of a
-- truncated blobs.qfd) instead of letting reclaim free — and new files reuse —
-- clusters that may still hold their bytes. A quarantined blob's chunks are
-- renamed to `marker` (a blob row whose loc is 4294967295, never a valid
-- cluster), so reads of them fail with EIO and new writes of the same bytes
-- never deduplicate onto the damaged copy. `clusters` (u32 little-endian
-- cluster numbers: the chain as far as it could be walked, plus every
-- cluster that looked orphaned at repair time, since it may be the lost rest
-- of the chain) stays allocated while any file still holds the marker.
CREATE TABLE quarantine (
    hash     BLOB PRIMARY KEY,
    marker   BLOB NOT NULL UNIQUE,
    size     INTEGER NOT NULL,
    loc      INTEGER NOT NULL,
    clusters BLOB NOT NULL,
    reason   TEXT NOT NULL,
    created  INTEGER NOT NULL
) WITHOUT ROWID;
