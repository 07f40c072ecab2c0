"""The ingest inputs: an image index (one row per site, one path column per channel) and cell locations.

Image index (CSV or Parquet): ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` and one path column
per channel. Channel columns are found by ``channels`` (names such as ``DNA``) as ``FileName_<name>``,
``PathName_<name>`` + ``FileName_<name>`` (CellProfiler LoadData style) or a column named exactly ``<name>``.
Relative paths are relative to the index file's folder. Other ``Metadata_*`` columns (treatment, MOA,
control) travel with the cells. Multi-page TIFFs: a ``Frame_<name>`` column (CellProfiler LoadData) gives the
0-based page of each channel (absent: page 0). Label images (for masking neighbours): a ``labels`` column
spec (default ``Labels``) found like a channel (``FileName_Labels`` [+ ``PathName_Labels``] or ``Labels``).

Cell locations: a CellProfiler nuclei table (CSV, Parquet or SQLite table) with ``Nuclei_Location_Center_X/Y``
or ``AreaShape_Center_X/Y`` (``Location_Center_X/Y`` too), either one table with the site keys
(``Metadata_Plate/Well/Site``) or one file per site given by a ``locations`` path column of the index.
Every problem names the file and the column or row. :func:`site_centres` gives each site's cells compactly
(packed arrays, or per-site files read on demand), so no run holds a DataFrame per site.

CellProfiler LoadData CSVs as the Cell Painting Gallery ships them (``URL_Orig<Ch>`` / ``PathName_Orig<Ch>`` +
``FileName_Orig<Ch>``, image URLs, ``Illum<Ch>`` flat fields) are read by :mod:`phenovec.ingest.load_data`;
:func:`read_image_index` hands such a table (or any index given by URL) to it, and an OME-Zarr HCS plate
(a ``.zarr`` store) to :func:`phenovec.ingest.ome_zarr.plate_index`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.io.profiles import read_table

SITE_KEYS = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
CENTER_COLUMNS = [
    ("Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"),
    ("AreaShape_Center_X", "AreaShape_Center_Y"),
    ("Nuclei_AreaShape_Center_X", "Nuclei_AreaShape_Center_Y"),
    ("Location_Center_X", "Location_Center_Y"),
]


@dataclass
class ImageIndex:
    """Sites (metadata) and, per site, the channel image paths in the configured order."""

    sites: pd.DataFrame
    channels: list[str]
    paths: list[list[str]]
    source: str
    frames: list[list[int]] | None = None  # page per site x channel (``Frame_<name>``); None: all page 0
    labels: list[str] | None = None  # label-image path per site; None: no label images
    # flat field per (plate, channel) named by the index (LoadData ``FileName_Illum<Ch>``); None: none named
    illumination: dict | None = None
    # local copy folder of images named by remote URL (``phenovec.ingest.image_source``); None: its default
    image_cache: str | None = None

    def site_paths(self, s: int) -> list[str]:
        """Local paths of site ``s``'s channel images: a remote URL kept in :attr:`paths` (a LoadData index read
        with ``fetch=False``) is copied into :attr:`image_cache` now, once; local paths are returned as they are."""
        from phenovec.ingest import image_source

        return image_source.local_paths(self.paths[s], self.image_cache,
                                        where=lambda i: f"{self.source}: site {s} channel {self.channels[i]}")

    def site_label_path(self, s: int) -> str | None:
        """The local path of site ``s``'s label image (copied now when it is a remote URL), or None without
        label images."""
        from phenovec.ingest import image_source

        if self.labels is None:
            return None
        return image_source.local_paths([self.labels[s]], self.image_cache,
                                        where=lambda i: f"{self.source}: site {s} label image")[0]

    def site_frames(self, s: int) -> list[int] | None:
        """The pages of site ``s``'s channels, or None when every channel is page 0."""
        if self.frames is None or not any(self.frames[s]):
            return None
        return list(self.frames[s])

    def __len__(self) -> int:
        return len(self.sites)


def _channel_paths(df: pd.DataFrame, name: str, root: Path, where: str) -> list[str]:
    if f"FileName_{name}" in df.columns:
        files = df[f"FileName_{name}"].astype(str)
        if f"PathName_{name}" in df.columns:
            files = [str(Path(p) / f) for p, f in zip(df[f"PathName_{name}"].astype(str), files)]
    elif name in df.columns:
        files = df[name].astype(str)
    else:
        raise KeyError(f"{where}: no column for channel {name!r} (expected FileName_{name} or {name})")
    return [str(p) if Path(p).is_absolute() else str(root / p) for p in files]


def channel_frames(df: pd.DataFrame, channels: Sequence[str], where: str) -> list[list[int]] | None:
    """Per row the page of each channel from its ``Frame_<channel>`` column (0 where absent); None: no such column."""
    cols = [f"Frame_{c}" for c in channels]
    if not any(c in df.columns for c in cols):
        return None
    out = []
    for col in cols:
        if col not in df.columns:
            out.append(np.zeros(len(df), dtype=np.int64))
            continue
        v = pd.to_numeric(df[col], errors="coerce")
        bad = v.isna() | (v < 0) | (v != np.floor(v))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"{where}: row {i} column {col}: {df[col].iloc[i]!r} is not a page number >= 0")
        out.append(v.to_numpy(dtype=np.int64))
    return [list(map(int, r)) for r in zip(*out)]


def read_image_index(path_or_df, channels: Sequence[str], root: str | os.PathLike | None = None,
                     labels: str | None = None, image_cache: str | os.PathLike | None = None,
                     fetch: bool = True) -> ImageIndex:
    """Read an image index (see the module docstring); ``root`` overrides the folder relative paths start from.
    ``labels`` names the label-image column (``FileName_<labels>`` [+ ``PathName_<labels>``] or ``<labels>``);
    None: the ``Labels`` column if the index has one, else no label images. ``image_cache``: where images named by
    remote URL (LoadData, OME-Zarr) are copied (default: ``phenovec.ingest.image_source.default_cache``).
    ``fetch``: copy a LoadData index's remote images (an OME-Zarr plate's fields) now (default), or (False) keep
    their URLs (``phenovec.ingest.ome_zarr.field_url``) in ``paths`` and copy each site's when it is processed
    (:meth:`ImageIndex.site_paths`; the crop and profile stages do, on the worker that processes the site), so a
    run over a remote plate starts at once."""
    from phenovec.ingest import load_data

    if not isinstance(path_or_df, pd.DataFrame):
        from phenovec.ingest import ome_zarr

        name = str(path_or_df).rstrip("/")
        if ome_zarr.is_ome_zarr(name) or (load_data.image_source.protocol(name) and name.endswith(".zarr")):
            return ome_zarr.plate_index(name, channels, cache=image_cache, fetch=fetch)
        if load_data.image_source.protocol(name):
            return load_data.read_load_data(path_or_df, channels, root=root, labels=labels, cache=image_cache,
                                            fetch=fetch)
    if isinstance(path_or_df, pd.DataFrame):
        df, where = path_or_df.reset_index(drop=True), "image index"
        base = Path(root) if root is not None else Path.cwd()
    else:
        p = Path(path_or_df)
        df, where = read_table(p).reset_index(drop=True), str(p)
        base = Path(root) if root is not None else p.parent
    if load_data.is_load_data(df.columns):
        return load_data.index_from_load_data(df, channels, where=where, base=str(base), labels=labels,
                                              cache=image_cache, fetch=fetch)
    missing = [k for k in SITE_KEYS if k not in df.columns]
    if missing:
        raise KeyError(f"{where}: missing site column {missing[0]!r}")
    if not channels:
        raise ValueError("channels: give at least one channel name, e.g. DNA ER RNA AGP Mito")
    per_channel = [_channel_paths(df, c, base, where) for c in channels]
    dup = df.duplicated(SITE_KEYS)
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise ValueError(f"{where}: row {i} repeats site {tuple(df.loc[i, SITE_KEYS])}")
    meta = df[[c for c in df.columns if str(c).startswith("Metadata_")]]
    paths = [list(ps) for ps in zip(*per_channel)]
    if labels is None and ("FileName_Labels" in df.columns or "Labels" in df.columns):
        labels = "Labels"
    label_paths = _channel_paths(df, labels, base, where) if labels is not None else None
    return ImageIndex(meta, list(channels), paths, where, frames=channel_frames(df, channels, where), labels=label_paths)


def _center_columns(df: pd.DataFrame, where: str) -> tuple[str, str]:
    for cx, cy in CENTER_COLUMNS:
        if cx in df.columns and cy in df.columns:
            return cx, cy
    raise KeyError(f"{where}: no nucleus centre columns (expected one of {[c[0] for c in CENTER_COLUMNS]} with _Y)")


def read_locations(path: str | os.PathLike, table: str = "Nuclei") -> pd.DataFrame:
    """A locations table as ``ObjectNumber`` (if present), ``x``, ``y`` plus any site keys it has.
    SQLite files (``.sqlite``/``.db``, CellProfiler ExportToDatabase) are read from ``table`` (``Per_Nuclei`` is
    tried too); their site keys come from ``Per_Image`` through ``ImageNumber``."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"locations file not found: {p}")
    if p.suffix.lower() in (".sqlite", ".db"):
        import sqlite3

        with sqlite3.connect(f"file:{p}?mode=ro", uri=True) as con:
            names = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
            t = table if table in names else f"Per_{table}" if f"Per_{table}" in names else None
            if t is None:
                raise KeyError(f"{p}: no table {table!r} (tables: {sorted(names)})")
            df = pd.read_sql_query(f'select * from "{t}"', con)
            # ExportToDatabase per-object layout: <Object>_Number_Object_Number, <Object>_AreaShape_*; the site
            # keys live in Per_Image (Image_Metadata_Plate/Well/Site) joined on ImageNumber
            df = df.rename(columns={f"{table}_Number_Object_Number": "ObjectNumber"})
            df.columns = [c.replace(f"{table}_", "", 1) if c.startswith(f"{table}_AreaShape") else c for c in df.columns]
            if "Per_Image" in names and "ImageNumber" in df.columns:
                img_cols = {r[1] for r in con.execute('pragma table_info("Per_Image")')}
                keys = [f"Image_Metadata_{k}" for k in ("Plate", "Well", "Site") if f"Image_Metadata_{k}" in img_cols]
                if keys:
                    img = pd.read_sql_query(
                        "select ImageNumber, " + ", ".join(f'"{k}"' for k in keys) + ' from "Per_Image"', con)
                    img.columns = ["ImageNumber"] + [k.replace("Image_", "", 1) for k in keys]
                    df = df.merge(img, on="ImageNumber", how="left", validate="many_to_one")
    else:
        df = read_table(p)
    cx, cy = _center_columns(df, str(p))
    out = pd.DataFrame({"x": pd.to_numeric(df[cx], errors="coerce"), "y": pd.to_numeric(df[cy], errors="coerce")})
    for col, name in ((cx, "x"), (cy, "y")):
        bad = ~np.isfinite(out[name].to_numpy(dtype=np.float64))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            v = df[col].iloc[i]
            v = repr(v) if isinstance(v, str) else v
            raise ValueError(f"{p}: row {i} column {col}: {v} is not a finite pixel "
                             f"coordinate ({int(bad.sum())} such rows)")
    if "ObjectNumber" in df.columns:
        out.insert(0, "ObjectNumber", df["ObjectNumber"].to_numpy())
    for k in SITE_KEYS:
        if k in df.columns:
            out[k] = df[k].to_numpy()
    _refuse_repeated_cells(out, p)
    return out


def _refuse_repeated_cells(loc: pd.DataFrame, where) -> None:
    """A cell listed twice (same site and ``ObjectNumber``, or same site and centre when there is no object
    number) is an error naming both rows: it would be cropped and counted twice."""
    keys = [k for k in SITE_KEYS if k in loc.columns] + (["ObjectNumber"] if "ObjectNumber" in loc.columns
                                                         else ["x", "y"])
    dup = loc.duplicated(keys, keep=False).to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)
        first = loc.iloc[rows].astype(str).groupby(keys, sort=False).indices
        pair = next(iter(first.values()))
        i, j = int(rows[pair[0]]), int(rows[pair[1]])
        what = ", ".join(f"{k}={loc[k].iloc[j]!r}" for k in keys)
        raise ValueError(f"{where}: row {j} repeats row {i} ({what}): each cell must be listed once")


class SiteCentres:
    """The located cells of every site of an index without one DataFrame per site (for long profiling runs).

    ``counts[s]``: cells of site ``s`` (index order); :meth:`table` gives ``ObjectNumber`` (when the locations
    have it), ``x``, ``y`` of one site in location order; :meth:`xy` the centres as float64. Made by
    :func:`site_centres`:

    - one table for all sites: the columns are packed into numpy arrays sorted by site (x, y float64, plus
      ``ObjectNumber`` in its own dtype): 16 bytes per cell (24 with an int64 ``ObjectNumber``) + 16 bytes per
      site, instead of a DataFrame per site with the site key columns;
    - one file per site (a ``Metadata_Locations`` column): only the paths and counts are held; :meth:`table`
      reads the site's file again (an error if it no longer has ``counts[s]`` cells).
    """

    def __init__(self, counts, *, x=None, y=None, object_number=None, starts=None, paths=None):
        self.counts = np.asarray(counts, dtype=np.int64)
        self._x, self._y, self._obj, self._starts, self._paths = x, y, object_number, starts, paths

    @classmethod
    def packed(cls, x, y, object_number, counts, group_of_site=None) -> "SiteCentres":
        """From arrays of all cells sorted by group; ``counts[g]`` cells per group; site ``s`` is group
        ``group_of_site[s]`` (default: site = group)."""
        counts = np.asarray(counts, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        x = np.ascontiguousarray(x, dtype=np.float64)
        y = np.ascontiguousarray(y, dtype=np.float64)
        if len(x) != starts[-1] or len(y) != starts[-1] or (object_number is not None
                                                           and len(object_number) != starts[-1]):
            raise ValueError(f"packed centres: {len(x)} x, {len(y)} y for {starts[-1]} cells")
        if group_of_site is None:
            group_of_site = np.arange(len(counts))
        g = np.asarray(group_of_site, dtype=np.int64)
        return cls(counts[g], x=x, y=y, object_number=object_number, starts=np.stack([starts[g], starts[g + 1]], 1))

    @classmethod
    def files(cls, paths: Sequence[str], counts) -> "SiteCentres":
        return cls(counts, paths=[str(p) for p in paths])

    def __len__(self) -> int:
        return len(self.counts)

    @property
    def nbytes(self) -> int:
        """Bytes held for the cells (the packed arrays; 0 for per-site files)."""
        return sum(a.nbytes for a in (self._x, self._y, self._obj, self._starts) if a is not None)

    def table(self, s: int) -> pd.DataFrame:
        if self._paths is not None:
            p = self._paths[s]
            t = read_locations(p)
            if len(t) != self.counts[s]:
                raise ValueError(f"{p}: has {len(t)} cells now but {self.counts[s]} when the run started "
                                 "(the locations file changed during the run)")
            return t[[c for c in ("ObjectNumber", "x", "y") if c in t.columns]]
        a, b = self._starts[s]
        cols = {} if self._obj is None else {"ObjectNumber": self._obj[a:b]}
        return pd.DataFrame({**cols, "x": self._x[a:b], "y": self._y[a:b]})

    def xy(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        if self._paths is not None:
            t = self.table(s)
            return t["x"].to_numpy(dtype=np.float64), t["y"].to_numpy(dtype=np.float64)
        a, b = self._starts[s]
        return self._x[a:b], self._y[a:b]


def locations_name(locations) -> str:
    """How messages name a locations argument: its path, or ``locations`` for a table or a per-site column."""
    return "locations" if locations is None or isinstance(locations, pd.DataFrame) else str(locations)


def site_centres(index: ImageIndex, locations) -> SiteCentres:
    """Per site (index order) its located cells, as a :class:`SiteCentres`: from one table (``DataFrame`` or path,
    read with :func:`read_locations`) keyed by the site columns (rows matched on the str of the keys, table order
    within a site, cells of sites not in the index unused), or from a per-site path column ``Metadata_Locations``
    of the index when ``locations`` is None. A table without site columns belongs to a one-site index."""
    if locations is None:
        if "Metadata_Locations" not in index.sites.columns:
            raise KeyError(f"{index.source}: no locations table given and no Metadata_Locations column")
        paths = list(index.sites["Metadata_Locations"])
        return SiteCentres.files(paths, [len(read_locations(p)) for p in paths])
    table = locations if isinstance(locations, pd.DataFrame) else read_locations(locations)
    for c in ("x", "y"):
        if c not in table.columns:
            raise KeyError(f"locations: no column {c!r} (read a nuclei table with phenovec.ingest.index."
                           "read_locations)")
    if not len(table):  # one table for every site (a per-site file may be empty: a site without cells)
        raise ValueError(f"{locations_name(locations)}: no located cell (the table has no rows)")
    obj = table["ObjectNumber"].to_numpy() if "ObjectNumber" in table.columns else None
    missing = [k for k in SITE_KEYS if k not in table.columns]
    if missing:
        if len(index) == 1:  # one site, one table without keys: it is that site's
            return SiteCentres.packed(table["x"].to_numpy(np.float64), table["y"].to_numpy(np.float64), obj,
                                      [len(table)])
        raise KeyError(f"locations: missing site column {missing[0]!r} needed to match {len(index)} sites")
    # rows keyed by the str of the site columns, table order within a group
    site_keys = [tuple(str(v) for v in row) for row in index.sites[SITE_KEYS].itertuples(index=False)]
    uniq = list(dict.fromkeys(site_keys))
    gid = {k: i for i, k in enumerate(uniq)}
    group_of_site = np.array([gid[k] for k in site_keys], dtype=np.int64)
    row_keys = pd.MultiIndex.from_frame(table[SITE_KEYS].astype(str)) if len(table) else None
    if row_keys is None or not uniq:
        g = np.full(len(table), -1, np.int64)
    else:
        g = pd.MultiIndex.from_tuples(uniq, names=SITE_KEYS).get_indexer(row_keys).astype(np.int64)
    del row_keys
    if not (g >= 0).any():
        raise ValueError(f"{locations_name(locations)}: none of its {len(table)} rows belongs to a site of "
                         f"{index.source} (matched on "
                         f"{SITE_KEYS}; first row: {tuple(table[SITE_KEYS].iloc[0])}, first site: {site_keys[0]})")
    order = np.argsort(g, kind="stable")
    order = order[g[order] >= 0]
    counts = np.bincount(g[g >= 0], minlength=len(uniq))
    return SiteCentres.packed(table["x"].to_numpy(np.float64)[order], table["y"].to_numpy(np.float64)[order],
                              None if obj is None else obj[order], counts, group_of_site)
