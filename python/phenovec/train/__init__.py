"""Training (PyTorch): weakly supervised single-cell classifiers whose pooled penultimate layer is the profile.

``train(config)`` runs the thesis recipe on a crops folder (``phenovec crop`` output) with exact resume;
``embed_crops`` embeds crops with a checkpoint. ``torch`` is imported only inside this stage and ``export``.
Modules: ``config`` (YAML schema), ``data`` (splits, epoch plans, loader), ``field_data`` (field stores:
MOAProfiler's whole-field input), ``inputs`` (crop or field store -> model input), ``distributed`` (torchrun / DDP),
``models`` (ProfileNet), ``augment``, ``schedule`` (optimisers, learning-rate schedules), ``checkpoint``, ``loop``,
``command`` (CLI).
"""
from phenovec.lazy_exports import lazy_exports

# public name -> submodule, imported on first use (the CLI's parser imports train.command only)
_EXPORTS = {
    **dict.fromkeys(["load_checkpoint", "model_from_checkpoint"], "checkpoint"),
    **dict.fromkeys(["ConfigError", "default_config", "load_config"], "config"),
    **dict.fromkeys(["TrainResult", "embed_crops", "train"], "loop"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["ConfigError", "TrainResult", "default_config", "embed_crops", "load_checkpoint", "load_config",
           "model_from_checkpoint", "train"]
