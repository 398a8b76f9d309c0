INSERT INTO saved_queries (name, sql, created) VALUES (:name, :sql, :now)
ON CONFLICT (name) DO UPDATE SET sql = excluded.sql
