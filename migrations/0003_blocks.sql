-- Why: st_blocks should count the bytes a file really holds, not its size:
-- a sparse file (holes, or punched ranges) holds only its stored chunks, and
-- `cp --sparse`, `du` and backup tools read st_blocks to find that out.
-- `blocks` is in 512-byte units, the sum over the file's chunks of each
-- chunk's stored length rounded up; every commit of the file keeps it current.
ALTER TABLE inodes ADD COLUMN blocks INTEGER NOT NULL DEFAULT 0;
UPDATE inodes SET blocks = (
    SELECT coalesce(sum((b.size + 511) / 512), 0)
    FROM chunks c JOIN blobs b ON b.hash = c.hash
    WHERE c.ino = inodes.ino
);
