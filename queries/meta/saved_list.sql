SELECT name, sql FROM saved_queries ORDER BY name
