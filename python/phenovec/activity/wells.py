"""The well table a benchmark reads: the profile file, metadata tables joined onto it, a row filter, features with
missing values dropped on request, and an optional normalisation (before the compound consensus).

A benchmark configuration's ``profiles`` section (see :mod:`phenovec.activity.benchmark`) drives it::

    profiles:
      path: ljosa_per_well_mean.csv.gz
      joins:                        # left joins, in order; each right table must be unique on its keys
        - path: BBBC021_v1_image.csv.gz
          left_on: [Image_Metadata_Plate, Image_Metadata_Well]
          right_on: [Image_Metadata_Plate_DAPI, Image_Metadata_Well_DAPI]   # default: left_on
          columns: [Image_Metadata_Compound, Image_Metadata_Concentration]  # default: every other column
      samples: "Metadata_moa.notna()"
      nan_features: drop            # error | drop: features with a missing / infinite value in a kept row
      normalize: {method: standardize, by: Metadata_Plate, samples: "Metadata_moa == 'DMSO'"}

Joins keep every well (a left join); a well a join does not match gets missing values, which ``samples`` can then
drop. A right table whose keys repeat with different values in the kept ``columns`` is an error naming the file and
the key (a per-site image table repeats each well's metadata: only the distinct rows count). Normalisation is
:func:`phenovec.process.normalize.normalize` on the kept wells (``method``, ``by`` and ``samples`` as there).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from phenovec.io.config_schema import ConfigError

JOIN_KEYS = ("path", "left_on", "right_on", "columns")
NORMALIZE_KEYS = ("method", "by", "samples")
NORMALIZE_METHODS = ("standardize", "robustize", "mad_robustize")


def _names(value, where: str) -> list[str]:
    """A column name or a list of names as a list; ``ConfigError`` naming ``where`` otherwise."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{where} must be a column name or a non-empty list of names, got {value!r}")


def _check_mapping(raw, keys: tuple[str, ...], where: str) -> None:
    """``ConfigError`` naming ``where`` unless ``raw`` is a mapping of (some of) ``keys``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping ({', '.join(keys)}), got {raw!r}")
    unknown = [k for k in raw if k not in keys]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (valid: {', '.join(keys)})")


def check_joins(raw, source: str) -> list[dict]:
    """``profiles.joins`` as a list of ``{path, left_on, right_on, columns}`` (lists of names; ``columns`` may be
    None = every non-key column); ``ConfigError`` naming ``profiles.joins[i].key`` for anything else."""
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: profiles.joins must be a list of mappings, got {type(raw).__name__}")
    out = []
    for i, j in enumerate(raw):
        where = f"{source}: profiles.joins[{i}]"
        _check_mapping(j, JOIN_KEYS, where)
        if not isinstance(j.get("path"), str):
            raise ConfigError(f"{where}.path must be a file path, got {j.get('path')!r}")
        left = _names(j.get("left_on"), f"{where}.left_on")
        right = _names(j["right_on"], f"{where}.right_on") if j.get("right_on") is not None else list(left)
        if len(right) != len(left):
            raise ConfigError(f"{where}: left_on and right_on name {len(left)} and {len(right)} columns")
        cols = None if j.get("columns") is None else _names(j["columns"], f"{where}.columns")
        out.append({"path": j["path"], "left_on": left, "right_on": right, "columns": cols})
    return out


def check_normalize(raw, source: str) -> dict | None:
    """``profiles.normalize`` as ``{method, by, samples}`` or None; ``ConfigError`` naming the key otherwise."""
    if raw is None:
        return None
    where = f"{source}: profiles.normalize"
    _check_mapping(raw, NORMALIZE_KEYS, where)
    method = raw.get("method", "standardize")
    if method not in NORMALIZE_METHODS:
        raise ConfigError(f"{where}.method = {method!r} is not one of {', '.join(NORMALIZE_METHODS)}")
    by = None if raw.get("by") is None else _names(raw["by"], f"{where}.by")
    samples = raw.get("samples", "all")
    if not isinstance(samples, str):
        raise ConfigError(f"{where}.samples must be 'all' or a row filter, got {samples!r}")
    if samples != "all":
        from phenovec.io.row_filter import parse_filter

        parse_filter(samples, key=f"{where}.samples")
    return {"method": method, "by": by, "samples": samples}


def join_table(wells: pd.DataFrame, right: pd.DataFrame, join: dict, source: str) -> pd.DataFrame:
    """``wells`` left-joined to the distinct rows of ``right`` (see the module docstring)."""
    for side, frame, cols in (("left_on", wells, join["left_on"]), ("right_on", right, join["right_on"])):
        for c in cols:
            if c not in frame.columns:
                raise ValueError(f"{source if side == 'right_on' else 'profiles'}: no column {c!r} "
                                 f"(profiles.joins {side})")
    keep = join["columns"] if join["columns"] is not None else [c for c in right.columns if c not in join["right_on"]]
    for c in keep:
        if c not in right.columns:
            raise ValueError(f"{source}: no column {c!r} (profiles.joins columns)")
    clash = [c for c in keep if c in wells.columns and c not in join["left_on"]]
    if clash:
        raise ValueError(f"{source}: column {clash[0]!r} is already in the profiles (profiles.joins columns)")
    r = right[list(dict.fromkeys([*join["right_on"], *keep]))].drop_duplicates()
    dup = r.duplicated(join["right_on"], keep=False)
    if dup.any():
        key = r.loc[dup, join["right_on"]].iloc[0].tolist()
        raise ValueError(f"{source}: key {dict(zip(join['right_on'], key))} has more than one row of "
                         f"{', '.join(keep)} (profiles.joins: the right table must be unique on right_on)")
    lk = [f"_join_l{i}" for i in range(len(join["left_on"]))]
    rk = [f"_join_r{i}" for i in range(len(join["right_on"]))]
    lkeys, rkeys = {}, {}
    for a, b, lc, rc in zip(lk, rk, join["left_on"], join["right_on"]):
        lkeys[a], rkeys[b] = _key_pair(wells[lc], r[rc])
    lframe, rframe = wells.assign(**lkeys), r.assign(**rkeys)
    rframe = rframe.drop(columns=[c for c in join["right_on"] if c not in keep])
    merged = lframe.merge(rframe, left_on=lk, right_on=rk, how="left", sort=False, validate="many_to_one")
    return merged.drop(columns=lk + rk)


def _key_pair(left: pd.Series, right: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Two key columns made comparable: as float64 when both are numeric (a concentration written 3 in one file
    and 3.000000 in the other), else as stripped text."""
    if pd.api.types.is_numeric_dtype(left) and pd.api.types.is_numeric_dtype(right):
        return left.astype(np.float64), right.astype(np.float64)
    return left.astype(str).str.strip(), right.astype(str).str.strip()


def read_wells(profiles: dict, resolve, source: str) -> tuple[pd.DataFrame, list[str], str]:
    """The well table of a checked ``profiles`` section (see the module docstring), its feature columns and its
    path (for errors); ``resolve(path)`` makes a configured path absolute."""
    from phenovec.io.profiles import read_table

    prof_path = resolve(profiles["path"])
    wells = read_table(prof_path)
    for join in check_joins(profiles.get("joins", []), source):
        jpath = resolve(join["path"])
        wells = join_table(wells, read_table(jpath), join, str(jpath))
    if profiles["samples"] != "all":
        from phenovec.io.row_filter import filter_mask

        wells = wells[filter_mask(wells, profiles["samples"], key=f"{source}: profiles.samples")]
        if wells.empty:
            raise ValueError(f"{source}: profiles.samples selects no row of {prof_path}")
    wells = wells.reset_index(drop=True)
    features = profile_features(wells, profiles["features"], str(prof_path))
    if profiles.get("nan_features", "error") == "drop":
        x = wells[features].to_numpy(dtype=np.float64)
        bad = [f for f, ok in zip(features, np.isfinite(x).all(axis=0)) if not ok]
        if len(bad) == len(features):
            raise ValueError(f"{prof_path}: every feature has a missing value (profiles.nan_features: drop)")
        wells = wells.drop(columns=bad)
        features = [f for f in features if f not in set(bad)]
    norm = check_normalize(profiles.get("normalize"), source)
    if norm is not None:
        from phenovec.process.normalize import normalize

        wells = normalize(wells, features=features, meta_features=[c for c in wells.columns if c not in set(features)],
                          samples=norm["samples"], method=norm["method"], by=norm["by"])
    return wells, features, str(prof_path)


def profile_features(wells: pd.DataFrame, features, source: str) -> list[str]:
    """The feature columns: CellProfiler's (``infer``) or the listed ones, each checked to exist."""
    if isinstance(features, str):
        from phenovec.process.columns import infer_cp_features

        return infer_cp_features(wells)
    missing = [f for f in features if f not in wells.columns]
    if missing:
        raise ValueError(f"{source}: no feature column {missing[0]!r} (profiles.features)")
    return list(features)


def resolver(base: Path):
    """``path -> Path`` relative to ``base`` unless absolute."""
    def resolve(value: str | os.PathLike) -> Path:
        p = Path(value)
        return p if p.is_absolute() else base / p
    return resolve
