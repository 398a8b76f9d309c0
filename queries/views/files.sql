-- One row per name of every file, directory, symlink and device in the tree
-- (a hard-linked file has one row per name; `id` is the same).
--
-- A caller sees only names it could reach through the real tree (search
-- permission on every ancestor directory, as the kernel checks it), and a
-- file's hash only when it may read the file (a hash confirms a guess of
-- the content). Root sees everything.
--
-- Built straight on the name table, so a query pays only for the columns it
-- reads: `path` and `parent` walk up the tree with a correlated recursive
-- subquery that runs only for rows whose path is asked for.
CREATE TEMP VIEW files AS
SELECT
    i.ino AS id,
    i.ino AS ino,
    (WITH RECURSIVE qfs_up(ino, p) AS (
         SELECT d.parent, CAST(d.name AS TEXT)
         UNION ALL
         SELECT x.parent, CAST(x.name AS TEXT) || '/' || up.p
         FROM qfs_up up JOIN main.dentries x ON x.ino = up.ino
         WHERE up.ino <> 1
     ) SELECT '/' || p FROM qfs_up WHERE ino = 1) AS path,
    CAST(d.name AS TEXT) AS name,
    (WITH RECURSIVE qfs_up(ino, p) AS (
         SELECT d.parent, ''
         UNION ALL
         SELECT x.parent, '/' || CAST(x.name AS TEXT) || up.p
         FROM qfs_up up JOIN main.dentries x ON x.ino = up.ino
         WHERE up.ino <> 1
     ) SELECT CASE p WHEN '' THEN '/' ELSE p END FROM qfs_up WHERE ino = 1) AS parent,
    d.parent AS parent_id,
    qfs_ext(d.name) AS ext,
    CASE i.kind
        WHEN 32768 THEN 'file' WHEN 16384 THEN 'dir' WHEN 40960 THEN 'symlink'
        WHEN 4096 THEN 'fifo' WHEN 49152 THEN 'socket' WHEN 8192 THEN 'char'
        WHEN 24576 THEN 'block' END AS kind,
    i.size AS size,
    i.kind | i.perm AS mode,
    printf('%04o', i.perm) AS perm,
    i.uid AS uid,
    i.gid AS gid,
    qfs_user(i.uid) AS owner,
    qfs_group(i.gid) AS "group",
    i.nlink AS nlink,
    i.atime / 1000000000 AS atime,
    i.mtime / 1000000000 AS mtime,
    i.ctime / 1000000000 AS ctime,
    i.btime / 1000000000 AS btime,
    datetime(i.mtime / 1000000000, 'unixepoch') AS modified,
    CASE WHEN qfs_readable(i.uid, i.gid, i.perm) THEN lower(hex(i.chash)) END AS hash,
    CAST(i.target AS TEXT) AS target
FROM main.dentries d JOIN main.inodes i ON i.ino = d.ino
WHERE qfs_visible(d.parent)
