UPDATE store SET value = CAST(value AS INTEGER) + 1 WHERE key = 'durable_barrier'
