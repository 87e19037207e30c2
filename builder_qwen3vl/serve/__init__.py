"""An OpenAI-compatible chat endpoint over one bundle (``python -m builder_qwen3vl serve BUNDLE``, docs/serve.md)."""
