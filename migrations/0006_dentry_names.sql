-- Why: a name looked up or removed through a tag folder (`rm -r /by-tag/x`
-- of thousands of files, `stat` of an entry) is found among the few inodes
-- that have that real name, instead of by walking every file of the tag:
-- without this index each such operation cost a pass over the whole tag.
CREATE INDEX dentries_by_name ON dentries(name);
