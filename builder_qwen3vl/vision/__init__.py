"""vision_encoder.onnx: the Qwen3-VL vision tower with DeepStack, one grid-independent ONNX file."""
