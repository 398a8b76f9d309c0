SELECT tag, ino FROM file_tags
