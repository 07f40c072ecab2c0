"""Per-well mean and median profiles of the single-cell embeddings, computed as soon as a well's sites finish.

A well = the sites sharing ``Metadata_Plate`` and ``Metadata_Well``. Its profile row (pycytominer
``aggregate`` style): the ``Metadata_*`` columns of the site table that are constant within every well (so
``Metadata_Site`` and per-site paths drop out), ``Metadata_Object_Count`` (cells with an embedding), then one
column per feature. ``mean`` and ``median`` are taken over the well's cell embeddings *as stored* (the output
dtype, widened to float64), so they equal ``pandas.DataFrame.groupby(...).mean() / .median()`` of the embeddings
store; a well without any embedded cell gets NaN features and count 0.

A finished well is committed as one small part, ``OUT/wells/well-NNNNNN.npz`` (its mean and median vectors and
its cell count, written atomically: it exists whole or not at all). The wide tables are built only at the end,
``WELL_ROW_GROUP`` wells per DataFrame (:meth:`WellWriter.rows`): a one-row Parquet file per well and operation
cost about 0.2 s of the main loop's CPU per well with 1,280 features (pandas -> Arrow converts column by column),
which on a small machine is taken from inference.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

WELL_KEYS = ["Metadata_Plate", "Metadata_Well"]
OBJECT_COUNT = "Metadata_Object_Count"
OPERATIONS = ("mean", "median")
WELL_ROW_GROUP = 256  # wells per DataFrame yielded by WellWriter.rows (a well row holds every feature)


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


def well_vectors(features: np.ndarray, dim: int) -> dict[str, np.ndarray]:
    """``{"mean": D, "median": D}`` (float64) of a well's cells x D embeddings; NaN for a well without cells."""
    x = np.asarray(features, dtype=np.float64)
    if not len(x):
        return {op: np.full(dim, np.nan) for op in OPERATIONS}
    return {"mean": x.mean(axis=0), "median": np.median(x, axis=0)}


class WellWriter:
    """The per-well profiles of a profiling run: each well committed (``OUT/wells/well-NNNNNN.npz``) as soon as its
    last site is, and the final mean / median tables built from those parts in (plate, well) order.

    ``read_features(site)`` -> that site's embeddings (cells x D, as stored). :meth:`resume` writes the wells whose
    sites were all committed before a kill but whose part was not.
    """

    def __init__(self, out, sites: pd.DataFrame, names: Sequence[str], read_features):
        groups = well_groups(sites)
        self.sites = sites
        self.names = list(names)
        self.read_features = read_features
        self.columns = well_metadata_columns(sites, groups)
        self.wells = list(groups.items())
        self.well_of = {s: w for w, (_, ss) in enumerate(self.wells) for s in ss}
        self.dir = Path(out) / "wells"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.remaining: dict[int, int] = {}

    def path(self, w: int) -> Path:
        return self.dir / f"well-{w:06d}.npz"

    def written(self, w: int) -> bool:
        return self.path(w).exists()

    def write(self, w: int) -> None:
        from phenovec.io.atomic import write_bytes_atomic

        feats = [self.read_features(s) for s in self.wells[w][1]]
        x = np.concatenate(feats) if feats else np.empty((0, len(self.names)))
        buf = io.BytesIO()
        np.savez(buf, count=np.int64(len(x)), **well_vectors(x, len(self.names)))
        write_bytes_atomic(self.path(w), buf.getvalue())

    def read(self, w: int) -> tuple[int, dict[str, np.ndarray]]:
        """(cell count, ``{"mean": D, "median": D}``) of committed well ``w``."""
        p = self.path(w)
        with np.load(p) as z:
            v = {op: z[op] for op in OPERATIONS}
            count = int(z["count"])
        for op in OPERATIONS:
            if v[op].shape != (len(self.names),):
                raise ValueError(f"{p}: {op} of shape {v[op].shape}, expected ({len(self.names)},)")
        return count, v

    def resume(self, done: set) -> None:
        """Count each well's uncommitted sites; write the wells whose sites are all in ``done`` but part is not."""
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
        """The well rows of ``op`` in (plate, well) order (a stable sort of the key values), as DataFrames of at
        most ``WELL_ROW_GROUP`` wells: the metadata columns, ``Metadata_Object_Count``, one float64 column per
        feature."""
        if op not in OPERATIONS:
            raise ValueError(f"op must be one of {OPERATIONS}, got {op!r}")
        if not self.wells:
            yield pd.DataFrame(columns=[*self.columns, OBJECT_COUNT, *self.names])
            return
        first = [ss[0] for _, ss in self.wells]
        keys = self.sites.iloc[first][WELL_KEYS].reset_index(drop=True)
        order = keys.sort_values(WELL_KEYS, kind="stable").index.to_numpy()
        for at in range(0, len(order), WELL_ROW_GROUP):
            ws = order[at:at + WELL_ROW_GROUP]
            got = [self.read(int(w)) for w in ws]
            meta = self.sites.iloc[[first[w] for w in ws]][self.columns].reset_index(drop=True)
            meta[OBJECT_COUNT] = np.array([c for c, _ in got], np.int64)
            feats = pd.DataFrame(np.stack([v[op] for _, v in got]), columns=self.names)
            yield pd.concat([meta, feats], axis=1)
