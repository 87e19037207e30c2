"""Reading a Hugging Face Qwen3-VL checkpoint: ``reader.py`` (the folder -> ``Checkpoint``), ``config.py``
(typed configs from both HF config formats), ``safetensors_index.py`` (headers only), ``weights.py`` (tensors
on demand). No weights are loaded until an exporter asks for them."""
