"""Fitted transforms on disk: one ``.npz`` (arrays + a JSON ``spec`` string, no pickle), written atomically."""
from __future__ import annotations

import json
import os
import zipfile
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
    if not zipfile.is_zipfile(p):
        raise ValueError(f"{p} is not a phenovec {what} (not an .npz archive)")
    try:
        with np.load(p, allow_pickle=False) as z:
            if "spec" not in z.files:
                raise ValueError(f"{p} is not a phenovec {what} (no 'spec' entry)")
            try:
                spec = json.loads(str(z["spec"]))
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}: the {what}'s 'spec' is not JSON: {e}") from None
            if not isinstance(spec, dict) or spec.get("format") != fmt:
                found = spec.get("format") if isinstance(spec, dict) else spec
                raise ValueError(f"{p} is not a phenovec {what} (format {found!r})")
            arrays = {}
            for k in z.files:
                if k != "spec":
                    try:
                        arrays[k] = z[k]
                    except ValueError:  # numpy refuses object arrays without allow_pickle
                        raise ValueError(f"{p}: the {what}'s {k!r} is a pickled object array, which phenovec never "
                                         "loads") from None
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise ValueError(f"{p}: unreadable {what} ({type(e).__name__}: {e})") from None
    return spec, arrays
