DELETE FROM saved_queries WHERE name = :name
