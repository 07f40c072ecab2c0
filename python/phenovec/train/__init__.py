"""Training (PyTorch): weakly supervised single-cell classifiers whose pooled penultimate layer is the profile.

``train(config)`` runs the thesis recipe on a crops folder (``phenovec crop`` output) with exact resume;
``embed_crops`` embeds crops with a checkpoint. ``torch`` is imported only inside this stage and ``export``.
Modules: ``config`` (YAML schema), ``data`` (splits, epoch plans, loader), ``models`` (ProfileNet),
``augment``, ``schedule`` (optimisers, learning-rate schedules), ``checkpoint``, ``loop``, ``command`` (CLI).
"""
from phenovec.train.checkpoint import load_checkpoint, model_from_checkpoint
from phenovec.train.config import ConfigError, default_config, load_config
from phenovec.train.loop import TrainResult, embed_crops, train

__all__ = ["ConfigError", "TrainResult", "default_config", "embed_crops", "load_checkpoint", "load_config",
           "model_from_checkpoint", "train"]
