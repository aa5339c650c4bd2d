"""fastclip: CLIP embeddings with onnxruntime, no PyTorch."""
