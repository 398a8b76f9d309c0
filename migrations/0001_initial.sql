-- Why: the first schema of a queryfs store. SQLite holds every piece of
-- metadata (the tree, attributes, xattrs) and the content index (which chunk
-- of which file is which blob, and where each blob lives); blob bytes live in
-- the QVFS container beside it, or inline here when they are small.
-- Pragmas (WAL, synchronous, busy_timeout) are set in code, not here.

-- Store identity and settings, as key/value text.
CREATE TABLE store (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- One row per inode. `ino` is the inode number the mount reports, so it is
-- stable across remounts. Times are nanoseconds since the Unix epoch.
-- `kind` is the S_IFMT part of st_mode, `perm` the 07777 part.
CREATE TABLE inodes (
    ino    INTEGER PRIMARY KEY,
    kind   INTEGER NOT NULL,
    perm   INTEGER NOT NULL,
    uid    INTEGER NOT NULL,
    gid    INTEGER NOT NULL,
    size   INTEGER NOT NULL DEFAULT 0,
    nlink  INTEGER NOT NULL,
    rdev   INTEGER NOT NULL DEFAULT 0,
    atime  INTEGER NOT NULL,
    mtime  INTEGER NOT NULL,
    ctime  INTEGER NOT NULL,
    btime  INTEGER NOT NULL,
    target BLOB            -- symlink target, NULL for everything else
);

-- Directory entries: names are raw bytes, as Linux names are.
CREATE TABLE dentries (
    parent INTEGER NOT NULL,
    name   BLOB NOT NULL,
    ino    INTEGER NOT NULL,
    PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE INDEX dentries_by_ino ON dentries(ino);

-- Content-addressed blobs, named by BLAKE3. `refcount` counts the chunk rows
-- that name the blob. A blob lives either in the container (`loc` = start
-- cluster of its chain) or inline (`data`), never both.
CREATE TABLE blobs (
    id       INTEGER PRIMARY KEY,
    hash     BLOB NOT NULL UNIQUE,
    size     INTEGER NOT NULL,
    refcount INTEGER NOT NULL,
    loc      INTEGER,
    data     BLOB,
    CHECK ((loc IS NULL) <> (data IS NULL))
);

-- File content: chunk `idx` of inode `ino` covers bytes
-- [idx * chunk_size, (idx + 1) * chunk_size). A missing chunk is a hole
-- (reads as zeros); a blob shorter than the chunk is padded with zeros.
CREATE TABLE chunks (
    ino  INTEGER NOT NULL,
    idx  INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (ino, idx)
) WITHOUT ROWID;

-- Extended attributes (`user.*`), raw names and values.
CREATE TABLE xattrs (
    ino   INTEGER NOT NULL,
    name  BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ino, name)
) WITHOUT ROWID;
