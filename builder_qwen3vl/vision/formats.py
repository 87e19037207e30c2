"""How the vision tower's weights are stored, and the default for each build precision.

``fp32`` / ``fp16``: float weights (fp16 in an fp32 graph: stored half, cast back). ``int8`` / ``int4``:
com.microsoft MatMulNBits (block-wise, asymmetric). ``qint8`` / ``quint8``: onnxruntime's dynamic
quantization (per-channel s8 / u8 weights, activations quantized per call, int8 x int8 kernels); it needs
an fp32 graph and onnxruntime's CPU kernels.
"""

from __future__ import annotations

from ..errors import InputError

WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4", "qint8", "quint8")
DYNAMIC_FORMATS = {"qint8": "QInt8", "quint8": "QUInt8"}  # format -> onnxruntime QuantType name

# -p int4 in an fp32 graph (CPU): dynamic int8 was the fastest measured vision format at the 2B shape
# with cosine 0.9995 to HF fp32 (docs/vision_encoder.md has the table). A float16 bundle (og's io dtype for
# int4 on CUDA, DML, WebGPU) cannot run dynamic quantization, so it keeps int8 MatMulNBits.
DEFAULT_WEIGHTS = {"fp32": "fp32", "fp16": "fp16", "int4": "qint8"}
DEFAULT_WEIGHTS_FP16_GRAPH = {"fp32": "fp16", "fp16": "fp16", "int4": "int8"}


def resolve_vision_format(precision: str, io_dtype: str, asked: str | None, where: str) -> str:
    """The weight format of vision_encoder.onnx in a bundle whose io dtype is ``io_dtype`` ("float32" | "float16").

    The graph itself computes in the io dtype (image_features feed embeddings.onnx in that dtype).
    """
    fp16_graph = io_dtype == "float16"
    weights = asked or (DEFAULT_WEIGHTS_FP16_GRAPH if fp16_graph else DEFAULT_WEIGHTS)[precision]
    if fp16_graph and weights in DYNAMIC_FORMATS:
        raise InputError(f"--extra_options vision_precision={weights}: needs a float32 bundle (-p fp32, or -p int4 -e cpu); "
                         f"{where} gives float16")
    if fp16_graph and weights == "fp32":
        weights = "fp16"  # an fp16 graph cannot hold fp32 weights
    return weights
