"""Fitted transforms on disk: one ``.npz`` (arrays + a JSON ``spec`` string, no pickle), written atomically."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` via a temporary sibling renamed into place: a crash never leaves a partial fit."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p
