"""``phenovec.export``: a trained ``ProfileNet`` to ONNX (features N x D, optional logits, dynamic batch) with its
channels, crop size and intensity scaling embedded, verified against PyTorch (``check_parity``).
"""
from phenovec.export.checkpoint import CheckpointContract, intensity_from_data_config, load_contract
from phenovec.export.onnx_export import ExportReport, export_onnx, weights_sha256
from phenovec.export.parity import ParityError, ParityReport, check_parity

__all__ = ["CheckpointContract", "ExportReport", "ParityError", "ParityReport", "check_parity", "export_onnx",
           "intensity_from_data_config", "load_contract", "weights_sha256"]
