"""Synthetic assay labels for the synthetic plates (:mod:`phenovec.ingest.synth`): a sparse compound x assay matrix
driven by the treatments' MOAs, so the assay-prediction workflow (labels, splits by compound, masked loss,
per-assay metrics) runs and is tested without outside data.

Model, per assay ``j`` (each from its own generator seeded by ``(seed, j)``, so adding assays does not change the
earlier ones):

1. **Responding MOAs**: every non-control MOA responds with probability ``respond``; at least one MOA responds and,
   with two or more MOAs, at least one does not (so every assay separates MOAs).
2. **True label**: a compound is active iff its MOA responds (compounds of one MOA agree, as their phenotypes do in
   the synthetic images).
3. **Label noise**: each label is flipped with probability ``noise``.
4. **Missing entries**: each label is unmeasured with probability ``missing``.
5. Both classes stay measured: where noise or missingness leaves an assay with no measured active (inactive), one
   compound whose true label is active (inactive) is measured with its true label, drawn from the same generator.

Controls (``Metadata_Control`` true, or the MOA / treatment named ``control``, case-insensitive ``DMSO`` by
default) get no label row: joined to the plate they are NaN rows, as in GapNet, whose matrix holds compounds only.

:func:`write_synth_assay_labels` writes ``assay_labels.csv`` (one row per compound, column ``Metadata_Treatment``
then ``assay_01`` ...; 1 / 0 / empty) and ``assays.csv`` (per assay: its responding MOAs and label counts) beside a
synthetic plate's ``index.csv`` (``phenovec synth --assays N``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.io.assay_labels import AssayLabels

__all__ = ["synth_assay_labels", "write_synth_assay_labels", "LABELS_FILE", "KEY_FILE"]

LABELS_FILE = "assay_labels.csv"
KEY_FILE = "assays.csv"
_TAG = 0xA55A


def _treatment_table(treatments, control: str) -> pd.DataFrame:
    """(compound, moa) per non-control compound, sorted by compound."""
    if isinstance(treatments, pd.DataFrame):
        for col in ("Metadata_Treatment", "Metadata_MOA"):
            if col not in treatments.columns:
                raise ValueError(f"treatments: no column {col!r} (expected a synthetic plate's index table)")
        df = treatments[["Metadata_Treatment", "Metadata_MOA"]].copy()
        ctl = treatments["Metadata_Control"].astype(str).str.lower().eq("true").to_numpy() \
            if "Metadata_Control" in treatments.columns else np.zeros(len(df), dtype=bool)
        df.columns = ["compound", "moa"]
    else:
        pairs = [tuple(t) for t in treatments]
        if any(len(t) != 2 for t in pairs):
            raise ValueError("treatments: expected (compound, moa) pairs")
        df = pd.DataFrame(pairs, columns=["compound", "moa"])
        ctl = np.zeros(len(df), dtype=bool)
    df["compound"] = df["compound"].astype(str)
    df["moa"] = df["moa"].astype(str)
    ctl = ctl | df["compound"].str.lower().eq(control.lower()).to_numpy() | df["moa"].str.lower().eq("control").to_numpy()
    df = df[~ctl].drop_duplicates()
    multi = df["compound"].duplicated(keep=False)
    if multi.any():
        c = df["compound"][multi].iloc[0]
        raise ValueError(f"treatments: compound {c!r} has more than one MOA "
                         f"({', '.join(sorted(df['moa'][df['compound'] == c]))})")
    if df.empty:
        raise ValueError("treatments: no non-control compound to label")
    return df.sort_values("compound", kind="stable").reset_index(drop=True)


def _probability(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not 0 <= float(v) < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), got {v!r}")
    return float(v)


def synth_assay_labels(treatments, n_assays: int = 12, *, seed: int = 0, respond: float = 0.4, noise: float = 0.05,
                       missing: float = 0.3, control: str = "DMSO") -> tuple[AssayLabels, pd.DataFrame]:
    """``(labels, key)``: the :class:`AssayLabels` of the non-control compounds of ``treatments`` (a synthetic
    plate's index table, or ``(compound, moa)`` pairs) x ``n_assays`` assays, and per assay its responding MOAs
    and counts. See the module docstring for the model."""
    if isinstance(n_assays, bool) or not isinstance(n_assays, (int, np.integer)) or n_assays < 1:
        raise ValueError(f"n_assays must be a positive integer, got {n_assays!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    noise, missing = _probability("noise", noise), _probability("missing", missing)
    if not 0 < float(respond) < 1:
        raise ValueError(f"respond must be a probability in (0, 1), got {respond!r}")
    tr = _treatment_table(treatments, control)
    moas = sorted(tr["moa"].unique())
    if len(moas) < 2:
        raise ValueError(f"treatments: assay labels need at least two non-control MOAs (got {moas}); with one, "
                         "every compound would have the same label")
    moa_of = tr["moa"].to_numpy()
    n = len(tr)
    values = np.empty((n, n_assays), dtype=np.float32)
    rows = []
    for j in range(n_assays):
        rng = np.random.default_rng([int(seed), _TAG, j])
        resp = rng.random(len(moas)) < respond
        if not resp.any():
            resp[rng.integers(len(moas))] = True
        if resp.all():
            resp[rng.integers(len(moas))] = False
        responding = {m for m, r in zip(moas, resp) if r}
        truth = np.isin(moa_of, list(responding)).astype(np.float32)
        label = np.where(rng.random(n) < noise, 1.0 - truth, truth).astype(np.float32)
        label[rng.random(n) < missing] = np.nan
        for cls in (1.0, 0.0):
            if not np.any(label == cls):
                pick = np.flatnonzero(truth == cls)
                label[pick[rng.integers(len(pick))]] = cls
        values[:, j] = label
        rows.append({"assay": f"assay_{j + 1:02d}", "responding_moas": "; ".join(sorted(responding)),
                     "n_active": int(np.sum(label == 1)), "n_inactive": int(np.sum(label == 0)),
                     "n_missing": int(np.isnan(label).sum())})
    tasks = [r["assay"] for r in rows]
    labels = AssayLabels(pd.Index(tr["compound"], name="Metadata_Treatment"), tasks, values, "synthetic assay labels")
    return labels, pd.DataFrame(rows)


def write_synth_assay_labels(out_dir: str | os.PathLike, n_assays: int = 12, *, index: str | os.PathLike | None = None,
                             seed: int = 0, respond: float = 0.4, noise: float = 0.05, missing: float = 0.3,
                             control: str = "DMSO", labels_name: str = LABELS_FILE) -> dict[str, Path]:
    """Write the labels of a synthetic plate (its ``index.csv``, by default ``out_dir/index.csv``) as
    ``out_dir/assay_labels.csv`` (or ``.parquet`` by ``labels_name``) and the key as ``out_dir/assays.csv``,
    atomically; returns ``{"assay_labels", "assay_key"}``."""
    from phenovec.io.profiles import write_table

    out = Path(out_dir)
    idx = Path(index) if index is not None else out / "index.csv"
    if not idx.exists():
        raise FileNotFoundError(f"{idx}: no synthetic plate index (run phenovec synth first)")
    labels, key = synth_assay_labels(pd.read_csv(idx), n_assays, seed=seed, respond=respond, noise=noise,
                                     missing=missing, control=control)
    paths = {"assay_labels": out / labels_name, "assay_key": out / KEY_FILE}
    labels.write(paths["assay_labels"])
    write_table(key, paths["assay_key"])
    return paths

