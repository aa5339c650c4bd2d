"""Retrieval over embeddings: quality metrics and exact search, as functions over arrays.

    from fastclip.retrieval import recall_at_k, search
    metrics = recall_at_k(image_vectors, text_vectors, text_image_index)   # clip_benchmark's keys
    metrics = retrieval_metrics(image_vectors, text_vectors, text_image_index)  # + mAP, P@K, nDCG@K
    indices, scores = search(query_vectors, corpus_vectors, k=10)         # exact top-k, chunked

No model is needed to call these. The runtime (embedding, session, ...) never imports this package.
"""

from .metrics import DEFAULT_KS, recall_at_k, reference_metrics, retrieval_metrics, retrieval_ranks, summarize
from .search import search

__all__ = ["DEFAULT_KS", "recall_at_k", "reference_metrics", "retrieval_metrics", "retrieval_ranks", "search",
           "summarize"]
