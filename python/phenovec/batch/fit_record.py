"""A batch-correction step's fit, saved and re-applied: one ``.npz`` (arrays + a JSON ``spec``, no pickle), written
atomically, as the process steps' fits are (:mod:`phenovec.io.archive`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phenovec.io.archive import load_npz_spec, save_npz_atomic

FORMAT = "phenovec.batch.fit"
FORMAT_VERSION = 1


@dataclass
class BatchFit:
    """``step`` (its name), ``params`` (JSON-able: the step's arguments and anything needed to re-apply, e.g. the
    features and group labels) and ``arrays`` (named numpy arrays)."""

    step: str
    params: dict
    arrays: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        spec = {"format": FORMAT, "version": FORMAT_VERSION, "step": self.step, "params": self.params}
        import json

        return save_npz_atomic(path, {**self.arrays, "spec": np.array(json.dumps(spec))})

    @classmethod
    def load(cls, path: str | os.PathLike, step: str | None = None) -> "BatchFit":
        """Read a fit written by :meth:`save`; ``ValueError`` naming the file if it is another step's."""
        spec, arrays = load_npz_spec(path, FORMAT, "batch-correction fit")
        if spec.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: batch-correction fit version {spec.get('version')} is not supported")
        if step is not None and spec.get("step") != step:
            raise ValueError(f"{path} is a {spec.get('step')!r} fit, not a {step!r} fit")
        return cls(spec["step"], spec["params"], dict(arrays))


def as_fit(fit, step: str) -> BatchFit:
    """A :class:`BatchFit` of ``step`` from a fit or a path to a saved one."""
    if isinstance(fit, BatchFit):
        if fit.step != step:
            raise ValueError(f"the given fit is a {fit.step!r} fit, not a {step!r} fit")
        return fit
    return BatchFit.load(fit, step)
