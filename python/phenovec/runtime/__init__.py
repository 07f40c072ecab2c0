"""``phenovec.runtime``: onnxruntime sessions (TensorRT -> CUDA -> CPU; OpenVINO on the CPU for bf16) over
phenovec ONNX models that check the model's embedded data contract (channels, crop size, intensity scaling) before
running. No torch needed.
"""
from phenovec.io.model_metadata import ModelMetadata, check_matches
from phenovec.runtime.providers import select_providers, tensorrt_options
from phenovec.runtime.session import ProfileSession, read_metadata

__all__ = ["ModelMetadata", "ProfileSession", "check_matches", "read_metadata", "select_providers",
           "tensorrt_options"]
