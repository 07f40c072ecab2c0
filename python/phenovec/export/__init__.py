"""``phenovec.export``: a trained ``ProfileNet`` to ONNX (features N x D, optional logits, dynamic batch) with its
channels, crop size and intensity scaling embedded, verified against PyTorch (``check_parity``); DeepProfiler's pretrained mode (``export_pretrained``: each channel
as grey -> RGB through an ImageNet-style network, C x D features).
"""
from phenovec.export.checkpoint import CheckpointContract, intensity_from_data_config, load_contract
from phenovec.export.onnx_export import ExportReport, export_onnx, weights_sha256
from phenovec.export.parity import ParityError, ParityReport, check_parity
from phenovec.export.pretrained import ChannelReplicatedNet, export_pretrained, pretrained_model

__all__ = ["ChannelReplicatedNet", "CheckpointContract", "ExportReport", "ParityError", "ParityReport", "check_parity", "export_onnx",
           "export_pretrained", "intensity_from_data_config", "load_contract", "pretrained_model", "weights_sha256"]
