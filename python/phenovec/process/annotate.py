"""``annotate``: join a platemap (and optional external metadata) to profiles, as pycytominer 1.7.1.

Semantics (pycytominer ``annotate`` with its defaults; ``format_broad_cmap`` is not provided):
the platemap (DataFrame, or a CSV/TSV path, delimiter inferred by the file name) gets ``Metadata_`` prepended
to every column lacking it (``add_metadata_id_to_platemap=True``); it is merged with the profiles
``platemap.merge(profiles, left_on=join_on[0], right_on=join_on[1], how="inner", suffixes=("_platemap", None))``
and ``join_on[0]`` is dropped when the names differ; ``external_metadata`` (with ``external_join_on``) is
left-merged with pycytominer's prefixing rule (``Metadata_`` / ``Image_Metadata_`` columns and those pycytominer
infers as features, ``Cells`` / ``Nuclei`` / ``Cytoplasm`` / numeric ``Image_``, keep their names, every other column
gets ``Metadata_``), then duplicate rows are dropped; ``clean_cellprofiler`` renames
``Image_Metadata_{Plate,Well,Site}`` to ``Metadata_*``; finally metadata columns come first. Differences from the
peer: a profile row that matches no platemap row is dropped by the inner join in both, but phenovec warns with the
count (the peer drops it silently); a platemap that lists a join key twice, or external metadata with two different
rows for one key, is refused naming the key (the peer silently repeats every matching profile, once per listing,
which doubles its weight in every aggregate, consensus and mAP after it); a join column that is missing raises
``KeyError`` naming it.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import pandas as pd

from phenovec.io.profiles import read_table
from phenovec.process.columns import METADATA_PREFIX


def _prefix_platemap(pm: pd.DataFrame) -> pd.DataFrame:
    pm = pm.copy()
    pm.columns = pd.Index([f"Metadata_{c}" if isinstance(c, str) and not c.startswith(METADATA_PREFIX) else c
                           for c in pm.columns])
    return pm


def _prefix_external(ext: pd.DataFrame) -> pd.DataFrame:
    """pycytominer 1.7.1's ``prepare_external_metadata_for_annotate``: ``Metadata_*`` and ``Image_Metadata_*`` keep
    their names, and so does every column ``infer_cp_features(image_features=True)`` calls a feature (a name starting
    ``Image`` / ``Cells`` / ``Nuclei`` / ``Cytoplasm`` that holds no nested values; an ``Image_`` one only if numeric);
    every other column gets ``Metadata_``."""
    def feature_like(c) -> bool:
        if not c.startswith(("Image", "Cells", "Nuclei", "Cytoplasm")):
            return False
        if ext[c].dtype == object and not all(pd.api.types.is_scalar(v) for v in ext[c].dropna()):
            return False
        return not c.startswith("Image_") or pd.api.types.is_numeric_dtype(ext[c])

    keep = {c for c in ext.columns if isinstance(c, str) and (
        c.startswith((METADATA_PREFIX, "Image_Metadata_")) or feature_like(c))}
    ext = ext.copy()
    ext.columns = pd.Index([c if c in keep else f"Metadata_{c}" if isinstance(c, str) else c for c in ext.columns])
    return ext


def _load(table, what: str) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame):
        return table
    p = Path(table)
    if not p.exists():
        raise FileNotFoundError(f"{what} file not found: {p}")
    if p.suffix in (".txt",):
        return pd.read_csv(p, sep="\t")
    return read_table(p)


def _refuse_repeated_keys(table: pd.DataFrame, keys: list, source, what: str) -> None:
    """``ValueError`` naming the file (or ``what``), the key columns and the first key value listed on two rows."""
    known = table[keys].dropna()
    repeated = known.duplicated(keep=False)
    if repeated.any():
        first = known[repeated].iloc[0]
        value = first.iloc[0] if len(keys) == 1 else tuple(first)
        name = source if isinstance(source, (str, Path)) else f"the {what}"
        raise ValueError(f"{name}: {what} rows {list(known.index[repeated & (known == first).all(axis=1)][:5])} "
                         f"share the key {keys[0] if len(keys) == 1 else keys} = {value!r}: every profile matching "
                         "it would be repeated, once per row; list each key once")


def annotate(
    profiles,
    platemap,
    join_on: Sequence[str] | str = ("Metadata_well_position", "Metadata_Well"),
    output_file=None,
    output_type=None,
    add_metadata_id_to_platemap: bool = True,
    clean_cellprofiler: bool = True,
    external_metadata=None,
    external_join_on: Sequence[str] | str | None = None,
) -> pd.DataFrame:
    """Annotate profiles with platemap (and external) metadata; see the module docstring for the semantics."""
    prof = _load(profiles, "profiles")
    pm = _load(platemap, "platemap")
    if add_metadata_id_to_platemap:
        pm = _prefix_platemap(pm)
    join = [join_on, join_on] if isinstance(join_on, str) else list(join_on)
    if len(join) != 2:
        raise ValueError(f"join_on must be [platemap column, profile column], got {join_on!r}")
    if join[0] not in pm.columns:
        raise KeyError(f"join_on: platemap has no column {join[0]!r} (columns: {list(pm.columns)[:8]}...)")
    if join[1] not in prof.columns:
        raise KeyError(f"join_on: profiles have no column {join[1]!r}")
    _refuse_repeated_keys(pm, [join[0]], platemap, "platemap")
    out = pm.merge(prof, left_on=join[0], right_on=join[1], how="inner", suffixes=("_platemap", None))
    if join[0] != join[1]:
        out = out.drop(columns=join[0])
    unmatched = len(prof) - int(prof[join[1]].isin(pm[join[0]]).sum())
    if unmatched:
        warnings.warn(f"annotate: {unmatched} profile rows match no platemap row on {join} and are dropped",
                      stacklevel=2)
    if (external_metadata is None) != (external_join_on is None):
        raise ValueError("external_metadata and external_join_on must be given together")
    if external_metadata is not None:
        ext = _prefix_external(_load(external_metadata, "external_metadata"))
        keys = [external_join_on] if isinstance(external_join_on, str) else list(external_join_on)
        missing = [k for k in keys if k not in ext.columns]
        if missing:
            raise KeyError(f"external_join_on: external metadata has no column {missing[0]!r} (after pycytominer's "
                           f"Metadata_ prefixing; columns: {list(ext.columns)[:8]}...)")
        _refuse_repeated_keys(ext.drop_duplicates(), keys, external_metadata, "external metadata")
        out = out.merge(ext, on=external_join_on, how="left", suffixes=(None, "_external")).reset_index(drop=True)
        out = out.drop_duplicates()
    if clean_cellprofiler:
        out = out.rename(columns={"Image_Metadata_Plate": "Metadata_Plate", "Image_Metadata_Well": "Metadata_Well",
                                  "Image_Metadata_Site": "Metadata_Site"})
    meta = [c for c in out.columns if str(c).startswith(METADATA_PREFIX)]
    out = out[meta + [c for c in out.columns if c not in set(meta)]]
    if output_file is not None:
        from phenovec.io.profiles import write_profiles

        write_profiles(out, output_file, output_type=output_type)
    return out
