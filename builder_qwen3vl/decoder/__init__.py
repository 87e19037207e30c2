"""model.onnx: og's Qwen3-VL text decoder with a (1 + D) * H wide input and the DeepStack adds."""

from .build import DecoderBuild, build_decoder, decoder_step

__all__ = ["DecoderBuild", "build_decoder", "decoder_step"]
