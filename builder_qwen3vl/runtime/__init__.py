"""Running a bundle with onnxruntime-genai and no PyTorch: model, chat prompt, greedy loop, images and video."""
