SELECT DISTINCT ino FROM chunks WHERE hash = :hash ORDER BY ino
