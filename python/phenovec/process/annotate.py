"""``annotate``: join a platemap (and optional external metadata) to profiles, as pycytominer 1.7.1.

Semantics (pycytominer ``annotate`` with its defaults; ``format_broad_cmap`` is not provided):
the platemap (DataFrame, or a CSV/TSV path, delimiter inferred by the file name) gets ``Metadata_`` prepended
to every column lacking it (``add_metadata_id_to_platemap=True``); it is merged with the profiles
``platemap.merge(profiles, left_on=join_on[0], right_on=join_on[1], how="inner", suffixes=("_platemap", None))``
and ``join_on[0]`` is dropped when the names differ; ``external_metadata`` (with ``external_join_on``) is
left-merged with pycytominer's prefixing rule (``Metadata_`` / ``Image_`` / ``Image_Metadata_`` columns keep their
names, every other column gets ``Metadata_``), then duplicate rows are dropped; ``clean_cellprofiler`` renames
``Image_Metadata_{Plate,Well,Site}`` to ``Metadata_*``; finally metadata columns come first. Differences from the
peer: a profile row that matches no platemap row is dropped by the inner join in both, but phenovec warns with the
count (the peer drops it silently); a join column that is missing raises ``KeyError`` naming it.
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
    keep = {c for c in ext.columns if isinstance(c, str) and (
        c.startswith(METADATA_PREFIX) or c.startswith("Image_Metadata_")
        or (c.startswith("Image_") and pd.api.types.is_numeric_dtype(ext[c])))}
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
