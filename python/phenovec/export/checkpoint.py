"""What export needs from a phenovec training checkpoint: the model and its data contract.

Checkpoints are written by ``phenovec.train.checkpoint`` and read here through it (``torch.load(...,
weights_only=True)``: never unpickled). The data contract embedded in the ONNX model comes from the checkpoint's
``data_config``: ``channels``, ``box_size`` (the crop size) and the intensity description, which is
``data_config["intensity"]`` when present, else built from the training stage's keys::

    {"input_scaling": "none" | "scale" | "minmax",   # phenovec.train.data.input_scaling: stored crops -> input
     "dtype_max": float,                             # divisor of the "scale" rule
     "crop_rescale": bool, "crop_intensity": ...,    # how crops were made (ingest manifest), when recorded
     "crop_illumination": true,                      # the crops were illumination corrected (only when so)
     "crop_mask": "neighbors" | "object"}            # the crops were masked with label images (only when so)

``crop_illumination`` and ``crop_mask`` come from the crop store's manifest config (``crop_config``: its
``illumination`` source and ``mask`` mode, ``phenovec.ingest.crop``), in both cases (added to an explicit
``data_config["intensity"]`` that does not state them). Only the fact of the correction is recorded, never the
training machine's flat-field paths: profiling is given the flat fields of the plates it profiles. Absent keys
(metadata of models exported before they were recorded) mean no correction and no mask.

``data_config["crops"]`` (the crop store training read, an absolute path) becomes ``CheckpointContract.crops``:
``export_onnx`` checks parity on that store's first crops while it exists.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CheckpointContract:
    path: Path
    model: object  # phenovec.train.models.ProfileNet, eval mode
    channels: list
    crop_size: int
    intensity: dict
    extra: dict = field(default_factory=dict)  # classes, tasks, label_column for the ONNX metadata
    crops: str | None = None  # data_config["crops"]: the crop store training read (parity crops come from it)


def intensity_from_data_config(dc: dict) -> dict:
    """The intensity description of a checkpoint's ``data_config`` (module docstring)."""
    crop_cfg = dc.get("crop_config") or {}
    if "intensity" in dc:
        return {**crop_steps(crop_cfg), **dc["intensity"]}
    if "input_scaling" not in dc:
        raise ValueError("checkpoint data_config has neither 'intensity' nor 'input_scaling'")
    out = {"input_scaling": str(dc["input_scaling"]), "dtype_max": float(dc.get("dtype_max", 1.0))}
    if "rescale" in crop_cfg:
        out["crop_rescale"] = bool(crop_cfg["rescale"])
    if crop_cfg.get("intensity") is not None:
        out["crop_intensity"] = crop_cfg["intensity"]
    return {**out, **crop_steps(crop_cfg)}


def crop_steps(crop_cfg: dict) -> dict:
    """``crop_illumination`` / ``crop_mask`` of a crop store's manifest config (module docstring): only the keys
    of the steps that ran."""
    out: dict = {}
    if crop_cfg.get("illumination") is not None:
        out["crop_illumination"] = True
    if crop_cfg.get("mask") is not None:
        out["crop_mask"] = str(crop_cfg["mask"])
    return out


def load_contract(path: str | os.PathLike) -> CheckpointContract:
    """Load CHECKPOINT's model (eval mode) and data contract; errors name the file and the missing key."""
    from phenovec.train.checkpoint import load_checkpoint, model_from_checkpoint

    path = Path(path)
    ck = load_checkpoint(path)
    dc = ck["data_config"]
    for key in ("channels", "box_size"):
        if key not in dc:
            raise ValueError(f"{path}: checkpoint data_config lacks key {key!r}")
    try:
        intensity = intensity_from_data_config(dc)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    try:
        model, _ = model_from_checkpoint(ck)
    except RuntimeError as e:  # state_dict does not fit the config
        raise ValueError(f"{path}: model_state does not fit model_config {ck['model_config']}: "
                         f"{str(e).splitlines()[0]}") from None
    extra = {}
    if dc.get("classes") is not None:
        extra["classes"] = tuple(str(c) for c in dc["classes"])
    if dc.get("tasks"):  # train.task: assays (the head's outputs, in order)
        extra["tasks"] = tuple(str(t) for t in dc["tasks"])
    if dc.get("label_column") is not None:
        extra["label_column"] = str(dc["label_column"])
    return CheckpointContract(path=path, model=model, channels=[str(c) for c in dc["channels"]],
                              crop_size=int(dc["box_size"]), intensity=intensity, extra=extra,
                              crops=None if dc.get("crops") is None else str(dc["crops"]))
