"""Inference's response cache for LLM answers (exact and semantic), in front of the generation doors.

    fingerprint.py  CacheRequest: everything that changes an answer -> exact key / context key
    entries.py      CachedAnswer and the in-process LRU (the exact cache's fast path)
    store.py        the `llm_cache` table in inference's schema (shared by replicas; pgvector)
    service.py      ResponseCache: lookup -> replay a hit / record a miss; invalidation; metrics
    replay.py       hits and recorded misses as generations the doors stream like any other
    handlers.py     models.promoted -> evict entries of the versions no longer served

Nothing here imports torch; see the README's "Response cache" for the design.
"""
