"""The tiny trained Qwen3-VL that ships with the package, and what the demo needs to assemble and ask it."""
