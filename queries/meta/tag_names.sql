SELECT name FROM tags ORDER BY name
