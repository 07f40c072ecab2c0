"""``collate``: CellProfiler compartment tables (Image + Cells + Cytoplasm + Nuclei) merged into one single-cell table,
as pycytominer 1.7.1 (``collate`` ingest, then ``SingleCells.merge_single_cells``).

Input, either
- a folder of CellProfiler CSV exports: every folder under it (itself included) that holds ``Image.csv`` is one
  site (one *table*) and must hold one ``<Compartment>.csv`` per compartment; a folder that lacks one is skipped
  with a warning naming it (cytominer-database skips such folders too). As cytominer-database ingests them, every
  column of a compartment table except ``ImageNumber`` / ``ObjectNumber`` gets the compartment prefix
  (``Cells_AreaShape_Area``, ``Cytoplasm_Parent_Cells``), the Image table keeps its names, and every row gets a
  ``TableNumber``: the site folder's position in sorted path order (cytominer-database uses a checksum; only
  equality within one run matters); or
- a SQLite file in that layout (cytominer-database's ``Image`` / ``Cells`` / ``Cytoplasm`` / ``Nuclei`` tables;
  names matched without regard to case; read with ``sqlite3``, table names checked against the file's own list).

The merge is the peer's, step for step: each compartment table is split into metadata (columns not starting with a
compartment name) and features (float64); for every linked pair in ``linking_columns`` (default: cytoplasm ->
cells through ``Cytoplasm_Parent_Cells``, cytoplasm -> nuclei through ``Cytoplasm_Parent_Nuclei``, each against
the other's ``ObjectNumber``), in the mapping's order and once per pair, the tables are inner-merged on
``merge_columns`` + the link columns with suffixes ``_<left>`` / ``_<right>``; the Image table's
``image_columns`` + ``strata`` (sorted by name, as ``np.union1d``) are right-merged on ``merge_columns``; the merge
columns, the link columns and their suffixed forms get ``Metadata_`` (``Metadata_ImageNumber``,
``Metadata_ObjectNumber_cells``, ``Metadata_Cytoplasm_Parent_Nuclei``). Values equal the peer's (tested to 1e-9
against ``SingleCells`` on real CellProfiler tables); the peer's metadata columns are object dtype, phenovec's keep
their numeric dtypes. Missing tables or columns are errors naming them.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

COMPARTMENTS = ("cells", "cytoplasm", "nuclei")
LINKING_COLUMNS = {
    "cytoplasm": {"cells": "Cytoplasm_Parent_Cells", "nuclei": "Cytoplasm_Parent_Nuclei"},
    "cells": {"cytoplasm": "ObjectNumber"},
    "nuclei": {"cytoplasm": "ObjectNumber"},
}
MERGE_COLUMNS = ("TableNumber", "ImageNumber")
IMAGE_COLUMNS = ("TableNumber", "ImageNumber", "Metadata_Site")
_UNPREFIXED = ("ImageNumber", "ObjectNumber")


def _check_linking(compartments: Sequence[str], linking: Mapping[str, Mapping[str, str]]) -> None:
    comps = set(compartments)
    for left, rights in linking.items():
        if left not in comps:
            raise ValueError(f"linking_columns: {left!r} is not one of the compartments {sorted(comps)}")
        for right in rights:
            if right not in comps:
                raise ValueError(f"linking_columns[{left!r}]: {right!r} is not one of the compartments {sorted(comps)}")
            if left not in linking.get(right, {}):
                raise ValueError(f"linking_columns: {left!r} -> {right!r} has no {right!r} -> {left!r} counterpart")


def _prefixed(df: pd.DataFrame, compartment: str) -> pd.DataFrame:
    name = compartment.capitalize()
    return df.rename(columns={c: c if c in _UNPREFIXED else f"{name}_{c}" for c in df.columns})


def _site_folders(root: Path, compartments: Sequence[str]) -> list[tuple[Path, dict[str, Path]]]:
    sites = []
    for image in sorted(q for q in [root / "Image.csv", *root.rglob("Image.csv")] if q.is_file()):
        folder = image.parent
        if sites and sites[-1][0] == folder:
            continue
        files = {"image": image}
        missing = []
        for c in compartments:
            f = folder / f"{c.capitalize()}.csv"
            if f.is_file():
                files[c] = f
            else:
                missing.append(f.name)
        if missing:
            warnings.warn(f"collate: {folder} has Image.csv but no {', '.join(missing)}; this site is skipped",
                          stacklevel=3)
            continue
        sites.append((folder, files))
    return sites


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, low_memory=False)
    except Exception as e:
        raise ValueError(f"{path}: cannot read as CSV ({type(e).__name__}: {e})") from None


def read_compartment_tables(source: str | os.PathLike, compartments: Sequence[str] = COMPARTMENTS,
                            image_table: str = "Image") -> dict[str, pd.DataFrame]:
    """``{"image": ..., compartment: ...}`` in cytominer-database's layout, from a CSV folder or a SQLite file
    (see the module docstring)."""
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"collate input not found: {p}")
    if p.is_dir():
        sites = _site_folders(p, compartments)
        if not sites:
            raise ValueError(f"{p}: no site folder with Image.csv and {', '.join(c.capitalize() + '.csv' for c in compartments)}")
        tables: dict[str, list[pd.DataFrame]] = {k: [] for k in ["image", *compartments]}
        for number, (_folder, files) in enumerate(sites, 1):
            for key, f in files.items():
                t = _read_csv(f)
                for col in ("ImageNumber",) + (("ObjectNumber",) if key != "image" else ()):
                    if col not in t.columns:
                        raise KeyError(f"{f}: no {col!r} column")
                t = t if key == "image" else _prefixed(t, key)
                t.insert(0, "TableNumber", number)
                tables[key].append(t)
        return {k: pd.concat(v, ignore_index=True) for k, v in tables.items()}
    with open(p, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            raise ValueError(f"{p}: collate reads a folder of CellProfiler CSVs or a SQLite file; this is neither")
    import sqlite3

    con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
    try:
        names = {str(n).lower(): str(n) for (n,) in con.execute("select name from sqlite_master where type='table'")}
        out = {}
        for key, table in [("image", image_table), *[(c, c) for c in compartments]]:
            real = names.get(table.lower())
            if real is None:
                raise KeyError(f"{p}: no table {table!r} (tables: {sorted(names.values())})")
            out[key] = pd.read_sql_query('select * from "' + real.replace('"', '""') + '"', con)
        return out
    finally:
        con.close()


def _split_load(df: pd.DataFrame, compartments: Sequence[str], where: str) -> pd.DataFrame:
    """The peer's ``load_compartment``: metadata columns first, then compartment-prefixed features as float64."""
    prefixes = tuple(c.lower() for c in compartments)
    meta = [c for c in df.columns if not str(c).lower().startswith(prefixes)]
    feats = [c for c in df.columns if str(c).lower().startswith(prefixes)]
    try:
        x = df[feats].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        from phenovec.process.columns import numeric_features

        x = numeric_features(df, feats)  # names the column and row that is not numeric
    return pd.concat([df[meta].reset_index(drop=True), pd.DataFrame(x, columns=feats)], axis=1)


def collate(
    source,
    compartments: Sequence[str] = COMPARTMENTS,
    linking_columns: Mapping[str, Mapping[str, str]] = LINKING_COLUMNS,
    merge_columns: Sequence[str] = MERGE_COLUMNS,
    image_columns: Sequence[str] = IMAGE_COLUMNS,
    strata: Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
    image_table: str = "Image",
    output_file: str | os.PathLike | None = None,
    output_type: str | None = None,
) -> pd.DataFrame:
    """One row per linked object (cell), with the Image table's ``image_columns`` + ``strata`` (see the module
    docstring). ``source``: a folder of CellProfiler CSVs, a SQLite file, or a dict of tables as
    :func:`read_compartment_tables` returns. With ``output_file`` the table is also written
    (:func:`phenovec.io.profiles.write_profiles`)."""
    compartments = [c.lower() for c in ([compartments] if isinstance(compartments, str) else compartments)]
    unknown = [c for c in compartments if c not in COMPARTMENTS]
    if unknown:
        raise ValueError(f"compartments: {unknown[0]!r} is not one of {list(COMPARTMENTS)}")
    linking = {k.lower(): {r.lower(): v for r, v in d.items()} for k, d in linking_columns.items()}
    _check_linking(compartments, linking)
    merge_columns = list(merge_columns)
    where = "tables" if isinstance(source, dict) else str(source)
    tables = source if isinstance(source, dict) else read_compartment_tables(source, compartments, image_table)

    def load(c: str) -> pd.DataFrame:
        if c not in tables:
            raise KeyError(f"{where}: no {c} table")
        return _split_load(tables[c], compartments, where)

    done, suffixes, sc = [], [], None
    for left, rights in linking.items():
        for right in rights:
            pair = "-".join(sorted([left, right]))
            if pair in done:
                continue
            sfx = (f"_{left}", f"_{right}")
            suffixes += list(sfx)
            left_link, right_link = linking[left][right], linking[right][left]
            if sc is None:
                sc = load(left)
            other = load(right)
            for name, t, cols in (("left", sc, [*merge_columns, left_link]), ("right", other, [*merge_columns, right_link])):
                missing = [c for c in cols if c not in t.columns]
                if missing:
                    raise KeyError(f"{where}: the {left if name == 'left' else right} table has no column {missing[0]!r} "
                                   f"(needed to link {left} and {right})")
            sc = sc.merge(other, left_on=[*merge_columns, left_link], right_on=[*merge_columns, right_link],
                          suffixes=sfx)
            done.append(pair)
    if sc is None:
        raise ValueError("linking_columns links no two compartments")
    link_names = [v for d in linking.values() for v in d.values()]
    rename = {c: f"Metadata_{c}" for c in merge_columns + link_names}
    for c in merge_columns + link_names:
        for s in set(suffixes):
            rename[f"{c}{s}"] = f"Metadata_{c}{s}"
    image = tables["image"]
    keep = list(np.union1d(list(image_columns), list(strata)))
    missing = [c for c in keep if c not in image.columns]
    if missing:
        raise KeyError(f"{where}: the Image table has no column {missing[0]!r} (image_columns + strata)")
    out = image[keep].merge(sc, on=merge_columns, how="right").rename(columns=rename)
    if output_file is not None:
        from phenovec.io.profiles import write_profiles

        write_profiles(out, output_file, output_type=output_type)
    return out
