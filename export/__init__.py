"""Export stage (installed as `fastclip_export`): CLIP towers → verified ONNX model folders. Needs torch."""
