"""``phenovec.export``: a trained ``ProfileNet`` to ONNX (features N x D, optional logits, dynamic batch) with its
channels, crop size and intensity scaling embedded, verified against PyTorch (``check_parity``); DeepProfiler's pretrained mode (``export_pretrained``: each channel
as grey -> RGB through an ImageNet-style network, C x D features).
"""
from phenovec.lazy_exports import lazy_exports

# public name -> submodule, imported on first use (the CLI's parser imports export.command only)
_EXPORTS = {
    **dict.fromkeys(["CheckpointContract", "intensity_from_data_config", "load_contract"], "checkpoint"),
    **dict.fromkeys(["ExportReport", "export_onnx", "weights_sha256"], "onnx_export"),
    **dict.fromkeys(["ParityError", "ParityReport", "check_parity"], "parity"),
    **dict.fromkeys(["ChannelReplicatedNet", "export_pretrained", "pretrained_model"], "pretrained"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["ChannelReplicatedNet", "CheckpointContract", "ExportReport", "ParityError", "ParityReport", "check_parity", "export_onnx",
           "export_pretrained", "intensity_from_data_config", "load_contract", "pretrained_model", "weights_sha256"]
