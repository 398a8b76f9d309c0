UPDATE file_tags SET tag = :new WHERE tag = :old
