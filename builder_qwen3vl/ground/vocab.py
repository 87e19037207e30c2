"""The names every layer shares: the architectures read, the precisions, execution providers and weight formats."""

from __future__ import annotations

# config.json "architectures" of the checkpoints this package reads (transformers' class names).
QWEN3_VL_ARCHITECTURE = "Qwen3VLForConditionalGeneration"
QWEN3_VL_MOE_ARCHITECTURE = "Qwen3VLMoeForConditionalGeneration"
# config.json "model_type" of each (og 0.18's genai_config model.type is the dense one for both: contract.py).
QWEN3_VL_MODEL_TYPE = "qwen3_vl"
QWEN3_VL_MOE_MODEL_TYPE = "qwen3_vl_moe"

# og's -p and -e vocabularies. Storage formats and precisions use og's -p names; graph element types are
# numpy's ("float32", "float16").
PRECISIONS = ("fp32", "fp16", "int4")
EXECUTION_PROVIDERS = ("cpu", "cuda", "dml", "webgpu")
EMBEDDINGS_PRECISIONS = PRECISIONS  # the embedding table: any decoder precision

# How the vision tower's linear weights are stored. fp32 / fp16: float weights (fp16 in an fp32 graph: stored
# half, cast back). int8 / int4: com.microsoft MatMulNBits (block-wise, asymmetric). qint8 / quint8:
# onnxruntime's dynamic quantization (per-channel s8 / u8 weights, activations quantized per call, int8 x int8
# kernels); it needs an fp32 graph and onnxruntime's CPU kernels.
VISION_WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4", "qint8", "quint8")
DYNAMIC_FORMATS = {"qint8": "QInt8", "quint8": "QUInt8"}  # format -> onnxruntime QuantType name
