-- Why: tags and saved queries, what makes the store more than a tree.
-- A tag is a name, optionally with a value per file ("year=1959"); files are
-- tagged through the user.tags / user.tag.<name> extended attributes and
-- listed by the /by-tag folders. Tags are keyed by inode, so they survive
-- renames and are shared by hard links. A tag exists (and shows in /by-tag)
-- from its first use or `mkdir /by-tag/<name>` until `rmdir` removes it.
CREATE TABLE tags (
    name    TEXT PRIMARY KEY,
    created INTEGER NOT NULL
) WITHOUT ROWID;

-- Which file holds which tag. `value` is NULL for a plain tag.
CREATE TABLE file_tags (
    tag   TEXT NOT NULL,
    ino   INTEGER NOT NULL,
    value TEXT,
    PRIMARY KEY (tag, ino)
) WITHOUT ROWID;
CREATE INDEX file_tags_by_ino ON file_tags(ino, tag);

-- The user's saved queries, shown as /queries/<name>/ beside the shipped ones.
CREATE TABLE saved_queries (
    name    TEXT PRIMARY KEY,
    sql     TEXT NOT NULL,
    created INTEGER NOT NULL
) WITHOUT ROWID;

-- Content identity of a regular file: BLAKE3 over its chunk hashes and size
-- (see `vfs::content_id`), kept current by every commit. Equal content
-- written through queryfs gives an equal id, so duplicates are one GROUP BY.
ALTER TABLE inodes ADD COLUMN chash BLOB;
CREATE INDEX inodes_by_chash ON inodes(chash) WHERE chash IS NOT NULL;
