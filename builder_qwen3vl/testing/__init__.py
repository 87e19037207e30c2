"""Offline writers of test checkpoints: random-weight Qwen3-VL folders of any dense or MoE config."""
