"""What the image trainer reads and how a stored batch becomes model input: a crop store or a field store.

``open_store(data)`` opens ``data.crops`` (``phenovec.train.data.open_crops``) or ``data.fields``
(``phenovec.train.field_data.open_fields``); both give the loop a table (``.cells``, ``row`` = the array row), the
array shape and chunking, and a chunk-cached loader (``phenovec.train.data.make_loader``). An :class:`InputRule`
says how a loaded batch becomes model input in training (``train_scale``, then the objective applies
``augment(...)``, the wrapped augmentation) and in evaluation (``eval_scale``), and what the checkpoint's
``data_config`` records so export and profiling apply the same rule:

- crops: the ``data.normalize`` rule (``phenovec.train.data.input_scaling`` / ``scale_batch``) in both, the
  augmentation as given;
- fields: per field and channel min-max to [0, 1] in training, the augmentation on those [0, 1] fields, then the
  per-channel standardisation (``phenovec.train.field_data``); evaluation applies min-max and standardisation.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class InputRule:
    train_scale: Callable  # loaded batch tensor -> what the objective augments
    eval_scale: Callable  # loaded batch tensor -> model input without augmentation
    augment: Callable  # augmentation module or None -> what the objective applies in training (or None)
    data_config: dict  # recorded in the checkpoint


def open_store(data: dict):
    """The crop store (``data.crops``) or field store (``data.fields``) of a checked ``data`` section."""
    if data.get("fields"):
        from phenovec.train.field_data import open_fields

        return open_fields(data["fields"])
    from phenovec.train.data import open_crops

    return open_crops(data["crops"], data["exclude_edge"])


def is_field_store(store) -> bool:
    from phenovec.train.field_data import FieldSet

    return isinstance(store, FieldSet)


def crop_rule(crops, data: dict) -> InputRule:
    from phenovec.train.data import input_scaling, scale_batch

    rule = input_scaling(crops, data["normalize"])
    dtype_max = float(np.iinfo(crops.dtype).max) if np.issubdtype(crops.dtype, np.integer) else 1.0
    n_ch, box = crops.shape[1], crops.shape[2]
    dc = {"channels": crops.channels or [f"ch{i}" for i in range(n_ch)], "box_size": int(box),
          "crop_shape": [int(v) for v in crops.shape[1:]], "input_scaling": rule, "dtype_max": dtype_max,
          "crop_config": crops.manifest.get("config", {}), "crops": data["crops"]}

    def scale(x):
        return scale_batch(x, rule, dtype_max)

    return InputRule(scale, scale, lambda aug: aug, dc)


def field_rule(fields, data: dict, train_rows: np.ndarray, seed: int, stats: tuple | None = None) -> InputRule:
    """The field input rule; ``stats`` = (mean, std) of a resumed run's checkpoint, else computed over the
    training fields (``data.stats_fields`` of them when set)."""
    from phenovec.train.field_data import SOURCE, Standardise, field_channel_moments, field_contract, minmax

    steps = [k for k in ("illumination", "intensity") if fields.config.get(k) is not None]
    if steps:
        warnings.warn(f"{fields.path}: the fields were tiled with {' and '.join(steps)} (`phenovec tiles`); field "
                      "profiling decodes raw fields without these steps, so `phenovec export --fields` will refuse "
                      "this model (tile without them to train an exportable field model)", UserWarning, stacklevel=3)
    if stats is None:
        stats = field_channel_moments(fields, train_rows, max_fields=data["stats_fields"], seed=seed)
    mean, std = stats
    intensity = field_contract(fields, mean, std)
    n_ch, side = fields.shape[1], fields.side
    dc = {"channels": fields.channels, "box_size": int(side), "crop_shape": [int(v) for v in fields.shape[1:]],
          "input_scaling": intensity["input_scaling"], "dtype_max": intensity["dtype_max"], "intensity": intensity,
          "source": SOURCE, "fields": data["fields"], "field_config": fields.config,
          "field_size": fields.field_size, "factor": fields.factor}
    standardise = Standardise(mean, std)

    def eval_scale(x):
        return standardise(minmax(x))

    return InputRule(minmax, eval_scale, lambda aug: Standardise(mean, std, aug), dc)


def saved_field_stats(ck: dict | None) -> tuple | None:
    """(mean, std) recorded in a resumed run's checkpoint, or None."""
    if ck is None:
        return None
    inten = (ck.get("data_config") or {}).get("intensity") or {}
    if inten.get("mean") is None:
        return None
    return list(inten["mean"]), list(inten["std"])
