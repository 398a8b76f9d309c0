-- One row per name of every file, directory, symlink and device in the tree
-- (a hard-linked file has one row per name; `id` is the same).
CREATE TEMP VIEW files AS
WITH RECURSIVE tree(ino, parent, name, path, parent_path) AS (
    SELECT d.ino, d.parent, CAST(d.name AS TEXT), '/' || CAST(d.name AS TEXT), '/'
    FROM main.dentries d
    WHERE d.parent = 1
    UNION ALL
    SELECT d.ino, d.parent, CAST(d.name AS TEXT), t.path || '/' || CAST(d.name AS TEXT), t.path
    FROM tree t JOIN main.dentries d ON d.parent = t.ino
)
SELECT
    i.ino AS id,
    i.ino AS ino,
    t.path AS path,
    t.name AS name,
    t.parent_path AS parent,
    t.parent AS parent_id,
    CASE WHEN instr(substr(t.name, 2), '.') > 0
         THEN lower(replace(t.name, rtrim(t.name, replace(t.name, '.', '')), ''))
         ELSE '' END AS ext,
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
    lower(hex(i.chash)) AS hash,
    CAST(i.target AS TEXT) AS target
FROM tree t JOIN main.inodes i ON i.ino = t.ino
