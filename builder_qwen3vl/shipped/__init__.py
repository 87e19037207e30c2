"""The tiny trained Qwen3-VL that ships with the package, and what the demo needs to use it.

``assembly.shipped_checkpoint()`` turns the shipped files (data/tiny_shapes/: the trained weights
without their embedding table, the config files, the training record) into a normal HF checkpoint
folder; ``table`` regenerates the left-out table bit for bit; ``shapes_task`` draws the pictures and
questions the model was trained and is evaluated on. Training and evaluation live outside the wheel,
in the source tree's tools/tiny_model/ (docs/trained_model.md).
"""
