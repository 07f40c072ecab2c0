"""The objective interface of the image trainer (see ``phenovec.train.objectives``).

An objective is built once per run from the validated configuration. The loop calls, in order:

1. ``targets(cells, is_train)`` -> ``Targets``: one target per cell (an int64 vector of class ids, or a float32
   matrix with NaN for a missing label, ...), the number of model outputs, the metadata stored in the checkpoint's
   ``data_config`` (class names, task names), the groups the ``data.balance: sampler`` option balances, and which
   validation cells have a usable target.
2. ``setup(model, train_targets, device)`` once the model exists: loss weights, extra trainable modules
   (``extra_modules()``: e.g. SimCLR's projection head; trained, checkpointed and restored with the model).
3. per training batch, under autocast: ``step(model, x, y, augment)`` -> ``(loss, stats)`` where ``stats`` maps a
   name to a (sum, count) pair accumulated over the epoch and reported as ``train_<name>`` (``loss`` is added by
   the loop). ``x`` is the scaled, *not yet augmented* batch: the objective applies ``augment`` (None when
   augmentation is off) as it needs (once for a classifier, twice for SimCLR's two views).
4. after each epoch, ``validate(model, batches)`` over the validation cells (no augmentation): a dict of metrics,
   reported as ``val_<name>``; ``score`` names the one that picks ``best.pt`` (``higher_is_better`` says which way).

Objectives may add configuration sections: ``SCHEMA`` (section -> key -> (default, types, check)), validated with
the rest by ``phenovec.train.config``, and ``check_config(cfg, source, base)`` for cross-key rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd


@dataclass
class Targets:
    values: np.ndarray  # one target per cell (first axis = cells of the crop table)
    outputs: int  # the model's output width
    meta: dict = field(default_factory=dict)  # into the checkpoint's data_config (e.g. {"classes": [...]})
    groups: np.ndarray | None = None  # int64 per cell for data.balance: sampler (None: not supported)
    usable: np.ndarray | None = None  # bool per cell: has a target a loss can use (None: all)


class Objective:
    task: str = ""
    score: str = "accuracy"  # the validation metric that picks best.pt
    higher_is_better: bool = True
    SCHEMA: dict = {}
    COMMENTS: dict = {}  # "section.key" -> the --print-config comment of each key SCHEMA adds

    def __init__(self, cfg: dict):
        self.cfg = cfg

    @classmethod
    def check_config(cls, cfg: dict, source: str, base) -> None:
        """Cross-key rules of this task's configuration (raise ``ConfigError`` naming the key); ``base`` is the
        folder relative paths are resolved against (the YAML file's, or the working directory)."""

    def targets(self, cells: pd.DataFrame, is_train: np.ndarray) -> Targets:
        raise NotImplementedError

    def setup(self, model, train_targets: np.ndarray, device) -> None:
        self.device = device

    def extra_modules(self):
        """A torch module trained beside the model (checkpointed as ``objective_state``), or None."""
        return None

    def step(self, model, x, y, augment: Callable | None) -> tuple[Any, dict[str, tuple[float, int]]]:
        raise NotImplementedError

    def validate(self, model, batches: Iterable) -> dict[str, float | None]:
        raise NotImplementedError

    def progress(self, stats: dict[str, tuple[float, int]]) -> dict[str, str]:
        """What the progress bar shows (running means of the epoch's stats)."""
        return {k: f"{s / max(n, 1):.3f}" for k, (s, n) in stats.items()}
