"""Bulk embedding on Ray (ray/: map_batches callables, resource planning, `embed_images` / `embed_texts`,
the `--engine ray` job). It imports the runtime's public names, never the other way round; Ray itself is
imported only here. The local process pool is runtime-level code: fastclip.pool (`fastclip.EmbeddingPool`).
"""
