"""A Hugging Face Qwen3-VL checkpoint folder read as untrusted data: typed configs, validated headers, weights on demand."""
