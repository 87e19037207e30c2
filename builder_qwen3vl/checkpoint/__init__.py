"""Reading a Hugging Face Qwen3-VL checkpoint: ``reader.py`` (the folder -> ``Checkpoint``), ``config.py``
(typed configs from both HF config formats, bounded by ``limits.py``), ``safetensors_index.py`` (headers only,
each validated whole), ``weights.py`` (tensors on demand). The folder is untrusted data: ``paths.py`` keeps
every read and copy inside it, ``json_files.py`` reads its JSON files bounded and checked. No weights are
loaded until an exporter asks for them."""
