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


class WellWriter:
    """The per-well rows of a profiling run (``OUT/wells/{mean,median}/well-NNNNNN.parquet``), each well written as
    soon as its last site is committed, and read back in (plate, well) order for the final tables.

    ``read_features(site)`` -> that site's embeddings (cells x D, as stored). A well's rows are written atomically
    (``phenovec.io.profiles.write_table``), mean then median; the well counts as written only when both exist, so
    a run killed in between rewrites it on resume (:meth:`resume`).
    """

    def __init__(self, out, sites: pd.DataFrame, names: Sequence[str], read_features):
        from pathlib import Path

        groups = well_groups(sites)
        self.sites = sites
        self.names = list(names)
        self.read_features = read_features
        self.columns = well_metadata_columns(sites, groups)
        self.wells = list(groups.items())
        self.well_of = {s: w for w, (_, ss) in enumerate(self.wells) for s in ss}
        self.dirs = {op: Path(out) / "wells" / op for op in OPERATIONS}
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.remaining: dict[int, int] = {}

    def path(self, op: str, w: int):
        return self.dirs[op] / f"well-{w:06d}.parquet"

    def written(self, w: int) -> bool:
        return all(self.path(op, w).exists() for op in OPERATIONS)

    def write(self, w: int) -> None:
        from phenovec.io.profiles import write_table

        ss = self.wells[w][1]
        feats = [self.read_features(s) for s in ss]
        x = np.concatenate(feats) if feats else np.empty((0, len(self.names)))
        rows = well_profiles(self.sites.iloc[ss[0]][self.columns], x, self.names)
        for op in OPERATIONS:
            write_table(rows[op], self.path(op, w))

    def resume(self, done: set) -> None:
        """Count each well's uncommitted sites; write the wells whose sites are all in ``done`` but rows are not."""
        self.remaining = {w: sum(1 for s in ss if s not in done) for w, (_, ss) in enumerate(self.wells)}
        for w, r in self.remaining.items():
            if r == 0 and not self.written(w):
                self.write(w)

    def site_committed(self, site: int) -> None:
        """Count ``site`` as committed; write its well when it was the well's last site."""
        w = self.well_of[site]
        self.remaining[w] -= 1
        if self.remaining[w] == 0:
            self.write(w)

    def rows(self, op: str):
        """The well rows of ``op``, one well at a time, in (plate, well) order (a stable sort of the key values)."""
        if not self.wells:
            yield pd.DataFrame(columns=[*self.columns, OBJECT_COUNT, *self.names])
            return
        keys = self.sites.iloc[[ss[0] for _, ss in self.wells]][WELL_KEYS].reset_index(drop=True)
        for w in keys.sort_values(WELL_KEYS, kind="stable").index:
            yield pd.read_parquet(self.path(op, w))
