UPDATE chunks SET hash = :marker WHERE hash = :hash
