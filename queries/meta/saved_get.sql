SELECT sql FROM saved_queries WHERE name = :name
