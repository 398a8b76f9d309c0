INSERT INTO quarantine (hash, marker, size, loc, clusters, reason, created) VALUES (:hash, :marker, :size, :loc, :clusters, :reason, :created)
