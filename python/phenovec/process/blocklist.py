"""Blocklists: named lists of known-noisy features that ``feature_select(operation="blocklist")`` removes.

Peer: ``pycytominer/cyto_utils/blocklist.py`` (1.7.1): ``Blocklist`` and ``get_blocklist_features``. The
packaged registry ``phenovec/process/data/default_blocklists.yaml`` is a copy of pycytominer's
``data/default_blocklists.yaml`` (BSD 3-Clause; header names the source): YAML, each top-level key a list
name, ``default`` = the 55 CellProfiler features of Way (2019).

Semantics of :func:`get_blocklist_features` (same as the peer's):

- ``blocklist_file`` (a CSV/TSV table with a ``blocklist`` column, e.g. pycytominer's
  ``blocklist_features.txt`` or LINCS ``consensus_blocklist.txt``) replaces ``blocklist`` when given;
- ``blocklist``: one feature name (a string is a name, never a path), a list of names, or any object with
  ``to_list()`` (a pycytominer ``Blocklist``);
- neither: the named list(s) ``blocklist_name`` from the packaged registry (``"default"`` when ``None``);
- with ``population_df``: only names that are columns of it are returned, in blocklist order (duplicates
  kept). Any column can be named, not only features (the peer's behaviour).

Errors name the problem: a missing file (``FileNotFoundError`` with the path), a file without a
``blocklist`` column, an unknown list name (the known names are listed). The peer's ``DeprecationWarning`` on
``blocklist_file`` is not raised (phenovec keeps the file form).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

REGISTRY = Path(__file__).resolve().parent / "data" / "default_blocklists.yaml"
DEFAULT_NAME = "default"


def load_blocklist(name: str | Sequence[str] = DEFAULT_NAME, registry: str | os.PathLike = REGISTRY) -> list[str]:
    """Feature names of the named list(s) in a YAML registry (packaged copy of pycytominer's by default).

    Several names are concatenated in the order given (as pycytominer's ``Blocklist``).
    """
    import yaml

    path = Path(registry)
    if not path.is_file():
        raise FileNotFoundError(f"blocklist registry not found: {path}")
    with path.open() as fh:
        lists = yaml.safe_load(fh)
    if not isinstance(lists, dict):
        raise ValueError(f"{path}: a blocklist registry must map list names to lists of feature names")
    names = [name] if isinstance(name, str) else [str(n) for n in name]
    out: list[str] = []
    for n in names:
        if n not in lists:
            raise ValueError(f"unknown blocklist name {n!r} in {path.name}; choose one of {sorted(lists)}")
        entry = lists[n]
        if not isinstance(entry, list):
            raise ValueError(f"{path.name}: entry {n!r} must be a list of feature names")
        out.extend(str(f) for f in entry)
    return out


def read_blocklist_file(path: str | os.PathLike) -> list[str]:
    """Names in the ``blocklist`` column of a CSV/TSV file (pycytominer's ``blocklist_file`` format)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"blocklist file not found: {p}")
    sep = "\t" if p.suffix.lower() in (".tsv", ".tab") else ","
    df = pd.read_csv(p, sep=sep)
    if "blocklist" not in df.columns:
        raise ValueError(f"blocklist file {p} must have a column named 'blocklist' (found {list(df.columns)[:5]})")
    return [str(v) for v in df["blocklist"].dropna().tolist()]


def get_blocklist_features(
    blocklist=None,
    blocklist_name: str | Sequence[str] | None = None,
    population_df: pd.DataFrame | None = None,
    blocklist_file: str | os.PathLike | None = None,
) -> list[str]:
    """Blocklisted names (present in ``population_df`` when given): pycytominer 1.7.1 ``get_blocklist_features``.

    See the module docstring for the argument forms; the result is the peer's list exactly (order and
    duplicates included).
    """
    if blocklist_file is not None:
        blocklist = read_blocklist_file(blocklist_file)
    if blocklist is None:
        names = load_blocklist(blocklist_name if blocklist_name is not None else DEFAULT_NAME)
    elif isinstance(blocklist, str):
        names = [blocklist]
    elif hasattr(blocklist, "to_list") and not isinstance(blocklist, (pd.Series, pd.Index)):
        names = [str(f) for f in blocklist.to_list()]
    elif isinstance(blocklist, (list, tuple, pd.Series, pd.Index)):
        names = [str(f) for f in blocklist]
    else:
        raise TypeError(
            f"blocklist must be a feature name, a list of names or a Blocklist, got {type(blocklist).__name__}"
        )
    if isinstance(population_df, pd.DataFrame):
        cols = set(population_df.columns)
        names = [f for f in names if f in cols]
    return names
