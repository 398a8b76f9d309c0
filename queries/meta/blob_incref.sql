UPDATE blobs SET refcount = refcount + 1 WHERE hash = :hash
