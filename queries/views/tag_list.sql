-- Every tag, with the number of files holding it (files the caller can
-- reach; a tag held only by files out of the caller's reach is not shown).
CREATE TEMP VIEW tag_list AS
SELECT tag, files FROM (
    SELECT t.name AS tag,
        (SELECT count(*) FROM main.file_tags f WHERE f.tag = t.name
            AND (NOT qfs_restricted()
                 OR EXISTS (SELECT 1 FROM main.dentries d
                            WHERE d.ino = f.ino AND qfs_visible(d.parent)))) AS files,
        NOT qfs_restricted()
            OR NOT EXISTS (SELECT 1 FROM main.file_tags f WHERE f.tag = t.name) AS shown
    FROM main.tags t
)
WHERE files > 0 OR shown
