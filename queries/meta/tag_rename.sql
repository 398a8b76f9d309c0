UPDATE tags SET name = :new WHERE name = :old
