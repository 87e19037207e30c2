"""Running a bundle with onnxruntime-genai, without PyTorch: ``og_run.py`` (model, chat prompt, greedy loop),
``image_io.py`` (the one image reader), ``resize.py`` (HF's grid), ``video.py`` / ``video_settings.py`` (video
through og's image path), ``tokens.py`` (the vocabulary's special tokens)."""
