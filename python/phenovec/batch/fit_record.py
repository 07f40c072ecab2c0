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
    #: where the fit came from (its file, once loaded), for error messages
    source: str = field(default="the given fit", compare=False)

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
        if not isinstance(spec.get("params"), dict):
            raise ValueError(f"{path}: batch-correction fit has no 'params' mapping")
        return cls(spec["step"], spec["params"], dict(arrays), source=str(path))

    def param(self, name: str):
        """The recorded parameter ``name``; ``ValueError`` naming the fit's file when it is missing."""
        if name not in self.params:
            raise ValueError(f"{self.source}: this {self.step} fit records no {name!r}; fit it again")
        return self.params[name]

    def array(self, name: str, shape: tuple | None = None) -> np.ndarray:
        """The array ``name``, checked against ``shape`` (a tuple; ``None`` entries take any length): ``ValueError``
        naming the fit's file when it is missing or of another shape (a fit edited by hand, or saved for other
        features), where the arithmetic would fail obscurely or, broadcasting, silently."""
        if name not in self.arrays:
            raise ValueError(f"{self.source}: this {self.step} fit has no array {name!r}; fit it again")
        a = np.asarray(self.arrays[name])
        wrong = a.ndim != len(shape) or any(w is not None and w != n for w, n in zip(shape, a.shape)) if shape else False
        if wrong:
            want = ", ".join("any" if w is None else str(w) for w in shape)
            want = f"({want},)" if len(shape) == 1 else f"({want})"
            raise ValueError(f"{self.source}: the {self.step} fit's {name!r} has shape {a.shape}, expected {want} "
                             f"for its {len(self.params.get('features', []))} features")
        return a


def as_fit(fit, step: str) -> BatchFit:
    """A :class:`BatchFit` of ``step`` from a fit or a path to a saved one."""
    if isinstance(fit, BatchFit):
        if fit.step != step:
            raise ValueError(f"the given fit is a {fit.step!r} fit, not a {step!r} fit")
        return fit
    return BatchFit.load(fit, step)
