"""Training checkpoints: plain dicts of tensors and Python scalars, written atomically, read with ``weights_only``.

A checkpoint (``last.pt`` every epoch, ``best.pt`` at the best validation accuracy) holds::

    {"format": "phenovec-checkpoint", "version": 1,
     "epoch": completed epochs, "model_config": ProfileNet.config, "model_state": state_dict,
     "optimizer_state": ..., "scheduler_state": ..., "scaler_state": ... or None, "rng_state": torch CPU RNG,
     "config": the validated training configuration, "config_hash": config.config_hash(config),
     "data_config": {"channels", "box_size", "input_scaling", "dtype_max", "label_column", "classes", "crops"},
     "best": {"epoch", "val_accuracy"}, "metrics": [one dict per epoch],
     "versions": {"phenovec", "torch"}}

Everything in it is a tensor, a number, a string, a list or a dict, so ``torch.load(path, weights_only=True)``
reads it: a checkpoint or weights file is never unpickled. Writes go to a temporary file in the same folder and
are renamed into place (``os.replace``), so a kill mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
from pathlib import Path

FORMAT = "phenovec-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable phenovec checkpoint; the message names it."""


def save_checkpoint(obj: dict, path: str | os.PathLike) -> Path:
    """Write ``obj`` (with format and version added) atomically to ``path``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save({"format": FORMAT, "version": VERSION, **obj}, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _load_error(e: BaseException) -> str:
    """What torch's load error says is wrong with the file, without its advice (re-running with weights_only=False,
    filing an issue, allow-listing globals), which phenovec never follows."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
        text = text.split(" Please use `torch.serialization", 1)[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines) if lines else type(e).__name__


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; errors name the file."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: not a phenovec checkpoint: it is not a torch file of tensors and plain "
                              f"data that weights_only=True can read ({_load_error(e)}); phenovec never unpickles "
                              "a checkpoint") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a phenovec checkpoint (no format={FORMAT!r} entry)")
    if ck.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ck.get('version')} is not supported (expected {VERSION})")
    for key in ("model_config", "model_state", "data_config"):
        if key not in ck:
            raise CheckpointError(f"{path}: checkpoint has no {key!r}")
    return ck


def model_from_checkpoint(path_or_ck, map_location="cpu"):
    """(ProfileNet in eval mode with the checkpoint's weights, the checkpoint dict)."""
    from phenovec.train.models import ProfileNet

    ck = load_checkpoint(path_or_ck, map_location) if not isinstance(path_or_ck, dict) else path_or_ck
    model = ProfileNet.from_config(ck["model_config"])
    model.load_state_dict(ck["model_state"])
    model.eval()
    return model, ck


def resume_checkpoint(out: str | os.PathLike, config_hash: str) -> dict | None:
    """The ``last.pt`` of a run folder to resume from (None when there is none); a checkpoint of another
    configuration (its ``config_hash`` differs) is refused with a ``ConfigError`` naming the file."""
    from phenovec.io.config_schema import ConfigError

    last = Path(out) / "last.pt"
    if not last.exists():
        return None
    ck = load_checkpoint(last)
    if ck.get("config_hash") != config_hash:
        raise ConfigError(f"{last}: holds a run with another configuration; use a new train.out folder or delete it "
                          "to start over")
    return ck
