"""Fitted transforms on disk: one ``.npz`` (arrays + a JSON ``spec`` string, no pickle), written atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from phenovec.io.atomic import atomic_path


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` via a temporary sibling renamed into place: a crash never leaves a partial fit."""
    p = Path(path)
    with atomic_path(p) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return p


def load_npz_spec(path: str | os.PathLike, fmt: str, what: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a fit written with :func:`save_npz_atomic`: ``(spec dict, arrays)``. ``FileNotFoundError`` if missing;
    ``ValueError`` naming the file if it has no ``spec`` or its ``spec["format"]`` is not ``fmt``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    with np.load(p, allow_pickle=False) as z:
        if "spec" not in z.files:
            raise ValueError(f"{p} is not a phenovec {what} (no 'spec' entry)")
        spec = json.loads(str(z["spec"]))
        if spec.get("format") != fmt:
            raise ValueError(f"{p} is not a phenovec {what} (format {spec.get('format')!r})")
        arrays = {k: z[k] for k in z.files if k != "spec"}
    return spec, arrays
