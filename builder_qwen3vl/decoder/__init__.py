"""model.onnx: og's Qwen3-VL text decoder with a (1 + D) * H wide input and the DeepStack adds.

``build.py`` drives og's builder, ``model.py`` is the subclass, ``og_builder.py`` reads og as a library,
``lazy_weights.py`` (the checkpoint read a module at a time), ``stream_quant.py`` (int4 quantized as written),
``progress.py``, ``spill.py`` and ``child_process.py`` bound the build's memory and report it,
``repeat_kv_fix.py`` patches og's fp16 graph.
"""

from .build import DecoderBuild, build_decoder, decoder_step

__all__ = ["DecoderBuild", "build_decoder", "decoder_step"]
