DELETE FROM quarantine WHERE hash = :hash
