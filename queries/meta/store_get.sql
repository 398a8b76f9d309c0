SELECT value FROM store WHERE key = :key
