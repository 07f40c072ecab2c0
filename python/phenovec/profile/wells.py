"""Per-well mean and median profiles of the single-cell embeddings, computed as soon as a well's sites finish.

A well = the sites sharing ``Metadata_Plate`` and ``Metadata_Well``. Its profile row (pycytominer
``aggregate`` style): the ``Metadata_*`` columns of the site table that are constant within every well (so
``Metadata_Site`` and per-site paths drop out), ``Metadata_Object_Count`` (cells with an embedding), then one
column per feature. ``mean`` and ``median`` are taken over the well's cell embeddings *as stored* (the output
dtype, widened to float64), so they equal ``pandas.DataFrame.groupby(...).mean() / .median()`` of the embeddings
store; a well without any embedded cell gets NaN features and count 0.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

WELL_KEYS = ["Metadata_Plate", "Metadata_Well"]
OBJECT_COUNT = "Metadata_Object_Count"
OPERATIONS = ("mean", "median")


def well_groups(sites: pd.DataFrame) -> dict[tuple, list[int]]:
    """``{(plate, well): [site positions]}`` in order of first appearance."""
    missing = [k for k in WELL_KEYS if k not in sites.columns]
    if missing:
        raise KeyError(f"site table: missing column {missing[0]!r} needed for well profiles")
    keys = sites[WELL_KEYS].astype(str)
    out: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys.itertuples(index=False, name=None)):
        out.setdefault(key, []).append(i)
    return out


def well_metadata_columns(sites: pd.DataFrame, groups: dict[tuple, list[int]]) -> list[str]:
    """``Metadata_*`` columns constant within every well (the well keys first)."""
    cols = [c for c in sites.columns if str(c).startswith("Metadata_") and c not in WELL_KEYS]
    keep = []
    for c in cols:
        col = sites[c]
        if all(col.iloc[idx].nunique(dropna=False) <= 1 for idx in groups.values()):
            keep.append(c)
    return WELL_KEYS + keep


def well_profiles(meta: pd.Series, features: np.ndarray, names: Sequence[str]) -> dict[str, pd.DataFrame]:
    """One-row mean and median tables of a well (``meta``: its metadata values; ``features``: cells x D)."""
    x = np.asarray(features, dtype=np.float64)
    out = {}
    for op in OPERATIONS:
        if len(x):
            v = x.mean(axis=0) if op == "mean" else np.median(x, axis=0)
        else:
            v = np.full(len(names), np.nan)
        row = pd.DataFrame([meta.to_dict()])
        row[OBJECT_COUNT] = len(x)
        row = pd.concat([row, pd.DataFrame(v[None, :], columns=list(names))], axis=1)
        out[op] = row
    return out
