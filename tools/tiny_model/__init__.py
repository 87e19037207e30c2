"""Training and evaluation of the tiny Qwen3-VL that ships in builder_qwen3vl/shipped/ (not in the wheel).

Importable as ``tiny_model`` with tools/ on sys.path (tests/conftest.py adds it; the command-line
scripts train_tiny.py and evaluate.py add it themselves). docs/trained_model.md describes the recipe.
"""
