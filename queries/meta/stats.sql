SELECT
    (SELECT count(*) FROM inodes WHERE kind = 32768 AND nlink > 0),
    (SELECT count(*) FROM inodes WHERE kind = 16384),
    (SELECT COALESCE(sum(size), 0) FROM inodes WHERE kind = 32768 AND nlink > 0),
    (SELECT count(*) FROM blobs),
    (SELECT COALESCE(sum(size), 0) FROM blobs),
    (SELECT COALESCE(sum(size), 0) FROM blobs WHERE data IS NOT NULL)
