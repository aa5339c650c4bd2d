"""LAION clip_benchmark's own retrieval evaluation, run on given vectors (the reference for our numbers).

`evaluate` wants a model and a dataloader; here the "images" are image indices and the "model"
returns the given vectors for them, so everything after the encoders is clip_benchmark's code as is.
It L2-normalizes what the encoders return (F.normalize); `normalized()` gives the vectors it scores.
"""

from __future__ import annotations

import numpy as np


def normalized(x: np.ndarray) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    return F.normalize(torch.from_numpy(np.asarray(x, np.float32)), dim=-1).numpy()


def evaluate(image_vectors, text_vectors, text_image_index, ks=(1, 5, 10), batch_size=64) -> dict[str, float]:
    import torch
    from clip_benchmark.metrics import zeroshot_retrieval

    images = torch.from_numpy(np.asarray(image_vectors, np.float32))
    texts = torch.from_numpy(np.asarray(text_vectors, np.float32))
    index = np.asarray(text_image_index)
    captions: list[list[int]] = [[] for _ in range(len(images))]
    for j, i in enumerate(index):
        captions[i].append(j)
    if any(index[j] != i for i, js in enumerate(captions) for j in js) or sorted(index.tolist()) != index.tolist():
        raise ValueError("clip_benchmark enumerates captions image by image: sort them by image first")

    class Model:
        def encode_image(self, batch):
            return images[batch]

        def encode_text(self, batch):
            return texts[batch]

    def tokenizer(caption_ids):
        return torch.tensor(caption_ids, dtype=torch.long)

    loader = [
        (torch.arange(start, min(start + batch_size, len(images))), captions[start : start + batch_size])
        for start in range(0, len(images), batch_size)
    ]
    return zeroshot_retrieval.evaluate(Model(), loader, tokenizer, "cpu", amp=False, recall_k_list=list(ks))
