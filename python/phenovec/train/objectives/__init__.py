"""What the image trainer optimises: one objective per ``train.task``, each in its own module.

The loop (``phenovec.train.loop``) owns everything shared by every task: crops, the split, the epoch plan,
augmentation, optimiser and schedule, mixed precision, checkpoints and exact resume. An objective owns what differs:
the per-cell targets, the size of the model's output layer, the loss of a batch, and the validation metric that picks
``best.pt``. The registry maps a task name to ``module:Class`` so a task's dependencies load only when it is used.

====================  ===========================================================================================
``classify``          single-label classification (cross-entropy with label smoothing), DeepProfiler's recipe
``assays``            multi-task binary assay prediction with missing labels masked out (GapNet)
``simclr``            self-supervised contrastive learning on crops (SimCLR, NT-Xent)
====================  ===========================================================================================
"""
from __future__ import annotations

import importlib

from phenovec.train.objectives.base import Objective, Targets

OBJECTIVES = {
    "classify": "phenovec.train.objectives.classify:Classify",
    "assays": "phenovec.train.objectives.assays:Assays",
    "simclr": "phenovec.train.objectives.simclr:SimCLR",
}


def objective_class(task: str) -> type[Objective]:
    """The objective class registered for ``task`` (KeyError naming the known tasks otherwise)."""
    try:
        target = OBJECTIVES[task]
    except KeyError:
        raise KeyError(f"train.task = {task!r} is unknown; known: {', '.join(OBJECTIVES)}") from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def available_tasks() -> list[str]:
    """The tasks whose module is present (a task being built may be registered before its module lands)."""
    out = []
    for task, target in OBJECTIVES.items():
        if importlib.util.find_spec(target.partition(":")[0]) is not None:
            out.append(task)
    return out


__all__ = ["OBJECTIVES", "Objective", "Targets", "available_tasks", "objective_class"]
