"""Profile tables for the table trainer: two modalities paired by perturbation, one table alone, splits, scaling.

:func:`pair_tables` joins a Cell Painting table and a second modality (L1000 gene expression, ...) on the
perturbation + dose key columns (``keys`` in the first table, ``tx_keys`` in the second: the public LINCS layout is
Cell Painting consensus profiles keyed by ``Metadata_pert_id`` / ``Metadata_mmoles_per_liter`` and L1000 level-5
signatures keyed by ``pert_id`` / ``pert_dose``), and on the replicate column too when both tables have it.
Numeric keys (doses) are compared at ``key_digits`` significant digits, so ``9.99999`` and ``10`` match. A key
held by several rows on both sides pairs every row of one with every row of the other (the thesis' grouping of
several CP replicates with one TX profile). Keys present on only one side are counted and listed in the
:class:`PairingReport`; no matching key at all is an error naming both files and example keys of each.

Features: the given columns, else every numeric column that is neither ``Metadata_*``, a key, a named metadata
column nor a CellProfiler id; a NaN or infinite feature is an error naming the file, column and row.

:func:`split_rows` splits the rows 70/10/20 (configurable) by whole compounds (``perturbation``) or by whole Bemis-
Murcko scaffolds (``scaffold``, RDKit via :mod:`phenovec.activity.scaffold`). :class:`Standardizer` is fitted on
the training rows of each modality only (each source row once, however many pairs it is in).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.io.profiles import ID_COLUMNS, is_metadata_column

__all__ = ["PairingError", "PairingReport", "PairedProfiles", "Standardizer", "feature_matrix", "pair_tables",
           "single_table", "split_rows"]

PERTURBATION = "Metadata_perturbation"  # the key columns as one string: the replicate label of the evaluation


class PairingError(ValueError):
    """Two tables that cannot be paired, or a table unfit for training; the message names the file and key."""


@dataclass
class PairingReport:
    cp_source: str
    tx_source: str | None
    keys: list
    tx_keys: list
    replicate_used: bool
    cp_rows: int
    tx_rows: int
    pairs: int
    matched_keys: int
    cp_only_keys: int
    tx_only_keys: int
    cp_only_examples: list = field(default_factory=list)  # up to 20 keys of the cp table with no partner
    tx_only_examples: list = field(default_factory=list)
    cp_rows_unpaired: int = 0
    tx_rows_unpaired: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PairedProfiles:
    """One row per (cp row, tx row) pair (or per cp row alone): metadata, raw feature matrices and where from."""

    meta: pd.DataFrame  # the cp table's metadata + PERTURBATION + cp_row (+ tx_row)
    cp: np.ndarray  # float32, raw
    cp_features: list
    tx: np.ndarray | None = None
    tx_features: list = field(default_factory=list)
    report: PairingReport | None = None

    def __len__(self) -> int:
        return len(self.meta)


def _key_text(values: pd.Series, digits: int, where: str) -> np.ndarray:
    """Key values as strings; numbers at ``digits`` significant digits; a missing value names its row."""
    na = values.isna().to_numpy()
    if na.any():
        r = int(np.flatnonzero(na)[0])
        raise PairingError(f"{where}: missing key value at row {r}")
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return np.array([format(float(v), f".{digits}g") for v in values.to_numpy()], dtype=object)
    return values.astype(str).to_numpy(dtype=object)


def feature_matrix(df: pd.DataFrame, features: Sequence[str] | None, exclude: Sequence[str], source: str,
                   what: str) -> tuple[list[str], np.ndarray]:
    """(feature names, float32 N x D matrix) of ``df``; NaN / inf is an error naming the column and row."""
    skip = set(exclude)
    if features is None:
        names = [c for c in df.columns if not is_metadata_column(c) and c not in skip and c not in ID_COLUMNS
                 and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
        if not names:
            raise PairingError(f"{source}: no numeric feature columns in the {what} table (name them with "
                               f"data.{what}_features)")
    else:
        names = list(features)
        missing = [c for c in names if c not in df.columns]
        if missing:
            raise PairingError(f"{source}: data.{what}_features names {missing[0]!r}, which is not a column"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        bad = [c for c in names if not pd.api.types.is_numeric_dtype(df[c])]
        if bad:
            raise PairingError(f"{source}: feature column {bad[0]!r} of the {what} table is not numeric "
                               f"(dtype {df[bad[0]].dtype})")
    x = df[names].to_numpy(dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        r, c = (int(v[0]) for v in np.nonzero(~finite))
        n_bad = int((~finite).sum())
        raise PairingError(f"{source}: the {what} modality has {'NaN' if np.isnan(x[r, c]) else 'infinite'} "
                           f"feature values: column {names[c]!r}, row {r}" + (f" ({n_bad} such values in all; "
                           "impute or drop them first)" if n_bad > 1 else "; impute or drop it first"))
    return [str(n) for n in names], np.ascontiguousarray(x, dtype=np.float32)


def _check_columns(df: pd.DataFrame, cols: Sequence[str], source: str, what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise PairingError(f"{source}: {what} column {missing[0]!r} is not in the table (columns: "
                           f"{list(df.columns)[:12]}{' ...' if df.shape[1] > 12 else ''})")


def _perturbation(df: pd.DataFrame, keys: Sequence[str], digits: int, source: str) -> np.ndarray:
    parts = [_key_text(df[k], digits, f"{source}: key column {k!r}") for k in keys]
    return np.array(["|".join(v) for v in zip(*parts)], dtype=object) if parts else np.zeros(0, dtype=object)


def single_table(cp: pd.DataFrame, *, keys: Sequence[str], features: Sequence[str] | None = None,
                 metadata: Sequence[str] = (), extra: Sequence[str] = (), key_digits: int = 3,
                 source: str = "cp") -> PairedProfiles:
    """One profile table for the one-modality tasks (SimCLR, fnn): its features and metadata, keys checked."""
    _check_columns(cp, keys, source, "key")
    _check_columns(cp, [c for c in extra if c is not None], source, "metadata")
    names, x = feature_matrix(cp, features, [*keys, *metadata, *[c for c in extra if c is not None]], source, "cp")
    meta = cp[[c for c in cp.columns if c not in set(names)]].reset_index(drop=True).copy()
    meta[PERTURBATION] = _perturbation(cp, keys, key_digits, source)
    meta["cp_row"] = np.arange(len(cp), dtype=np.int64)
    return PairedProfiles(meta, x, names)


def pair_tables(cp: pd.DataFrame, tx: pd.DataFrame, *, keys: Sequence[str], tx_keys: Sequence[str] | None = None,
                replicate: str | None = None, cp_features: Sequence[str] | None = None,
                tx_features: Sequence[str] | None = None, cp_metadata: Sequence[str] = (),
                tx_metadata: Sequence[str] = (), extra: Sequence[str] = (), key_digits: int = 3,
                cp_source: str = "cp", tx_source: str = "tx") -> PairedProfiles:
    """Join ``cp`` and ``tx`` on the keys (see the module docstring); ``extra`` are cp columns the caller needs
    (compound, MOA, SMILES) and that are therefore never features."""
    keys = list(keys)
    tx_keys = list(tx_keys) if tx_keys is not None else keys
    if len(tx_keys) != len(keys):
        raise PairingError(f"{tx_source}: {len(tx_keys)} key columns for the {len(keys)} of {cp_source}")
    _check_columns(cp, keys, cp_source, "key")
    _check_columns(tx, tx_keys, tx_source, "key")
    extra = [c for c in extra if c is not None]
    _check_columns(cp, extra, cp_source, "metadata")
    use_rep = replicate is not None and replicate in cp.columns and replicate in tx.columns
    cp_join = keys + ([replicate] if use_rep else [])
    tx_join = tx_keys + ([replicate] if use_rep else [])
    cp_names, xc = feature_matrix(cp, cp_features, [*cp_join, *cp_metadata, *extra,
                                                    *([replicate] if replicate else [])], cp_source, "cp")
    tx_names, xt = feature_matrix(tx, tx_features, [*tx_join, *tx_metadata, *([replicate] if replicate else [])],
                                  tx_source, "tx")
    kc = _perturbation(cp, cp_join, key_digits, cp_source)
    kt = _perturbation(tx, tx_join, key_digits, tx_source)
    left = pd.DataFrame({"_key": kc, "cp_row": np.arange(len(cp), dtype=np.int64)})
    right = pd.DataFrame({"_key": kt, "tx_row": np.arange(len(tx), dtype=np.int64)})
    joined = left.merge(right, on="_key", how="inner", sort=False).sort_values(["cp_row", "tx_row"], kind="stable")
    set_c, set_t = set(kc), set(kt)
    only_c, only_t = sorted(set_c - set_t), sorted(set_t - set_c)
    report = PairingReport(cp_source, tx_source, keys, tx_keys, use_rep, len(cp), len(tx), len(joined),
                           len(set_c & set_t), len(only_c), len(only_t), only_c[:20], only_t[:20],
                           int((~np.isin(kc, list(set_t))).sum()), int((~np.isin(kt, list(set_c))).sum()))
    if joined.empty:
        raise PairingError(f"{cp_source} and {tx_source}: no key matches between the tables (keys {cp_join} / "
                           f"{tx_join}; e.g. {cp_source}: {only_c[:3]}, {tx_source}: {only_t[:3]}); check "
                           "data.keys / data.tx_keys and data.key_digits")
    rc, rt = joined["cp_row"].to_numpy(), joined["tx_row"].to_numpy()
    meta = cp[[c for c in cp.columns if c not in set(cp_names)]].iloc[rc].reset_index(drop=True).copy()
    meta[PERTURBATION] = _perturbation(cp, keys, key_digits, cp_source)[rc]
    meta["cp_row"], meta["tx_row"] = rc, rt
    return PairedProfiles(meta, np.ascontiguousarray(xc[rc]), cp_names, np.ascontiguousarray(xt[rt]), tx_names,
                          report)


def split_rows(meta: pd.DataFrame, how: str, fractions=(0.7, 0.1, 0.2), *, compound: str, smiles: str | None = None,
               seed: int = 0, source: str = "cp") -> np.ndarray:
    """``"train"`` / ``"val"`` / ``"test"`` per row: whole compounds (``perturbation``) or whole Murcko scaffolds
    (``scaffold``) per split, sized by rows (:func:`phenovec.activity.scaffold.scaffold_split`, seeded)."""
    from phenovec.activity.scaffold import murcko_scaffolds, scaffold_split

    if compound not in meta.columns:
        raise PairingError(f"{source}: data.compound column {compound!r} is not in the table")
    cpd = meta[compound]
    if cpd.isna().any():
        raise PairingError(f"{source}: data.compound column {compound!r} is missing at row "
                           f"{int(np.flatnonzero(cpd.isna().to_numpy())[0])}")
    cpd = cpd.astype(str).to_numpy(dtype=object)
    if how == "perturbation":
        groups = cpd
    elif how == "scaffold":
        if smiles is None or smiles not in meta.columns:
            raise PairingError(f"{source}: data.split: scaffold needs the SMILES column data.smiles = {smiles!r}")
        uniq, first = np.unique(cpd, return_index=True)
        scaf = murcko_scaffolds(meta[smiles].to_numpy()[first].tolist(), source=f"{source}, column {smiles!r}",
                                row_names=[int(i) for i in first])
        lookup = dict(zip(uniq, scaf))
        groups = np.array([lookup[c] for c in cpd], dtype=object)
    else:
        raise PairingError(f"data.split = {how!r}: use perturbation or scaffold")
    split = scaffold_split(list(groups), fractions, seed=seed)
    out = np.array(split.labels(len(meta)), dtype=object)
    out[out == "valid"] = "val"
    return out


@dataclass
class Standardizer:
    """Per-feature ``(x - mean) / scale``; a constant feature gets scale 1."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "Standardizer":
        if len(x) == 0:
            raise PairingError("cannot fit a standardisation on no training rows")
        x = np.asarray(x, dtype=np.float64)
        mean, sd = x.mean(axis=0), x.std(axis=0)
        sd = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(mean)), sd, 1.0)
        return cls(mean.astype(np.float32), sd.astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.mean) / self.scale).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "scale": [float(v) for v in self.scale]}

    @classmethod
    def from_dict(cls, d: dict) -> "Standardizer":
        return cls(np.asarray(d["mean"], dtype=np.float32), np.asarray(d["scale"], dtype=np.float32))


def fit_on_sources(x: np.ndarray, source_rows: np.ndarray, train: np.ndarray) -> Standardizer:
    """A :class:`Standardizer` fitted on the training pairs' distinct source rows (each source row once)."""
    _, first = np.unique(source_rows[train], return_index=True)
    return Standardizer.fit(x[np.flatnonzero(train)[first]])


def replicate_groups(meta: pd.DataFrame, column: str) -> np.ndarray:
    """Integer codes of ``column`` (the group of each row for replicate positives and negatives masking)."""
    codes, _ = pd.factorize(meta[column].astype(str), sort=True)
    return codes.astype(np.int64)
