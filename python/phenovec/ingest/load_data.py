"""CellProfiler LoadData CSVs as the Cell Painting Gallery ships them (JUMP ``load_data_csv``), read as an image index.

A LoadData CSV has one row per site: the JUMP metadata (``Metadata_Source``, ``Metadata_Batch``,
``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``, ...) and per channel ``<Ch>`` (``DNA``, ``ER``,
``RNA``, ``AGP``, ``Mito``, brightfield ...) its image as

- ``URL_Orig<Ch>``: a full URL or path (``s3://cellpainting-gallery/...``, ``file:///...``), or
- ``PathName_Orig<Ch>`` + ``FileName_Orig<Ch>``: a folder (local or URL) and a file name, or ``FileName_Orig<Ch>``
  alone (relative to the CSV's folder);
- optionally ``Frame_Orig<Ch>``: the 0-based page of a multi-page TIFF.

The ``load_data_with_illum`` variants add ``FileName_Illum<Ch>`` + ``PathName_Illum<Ch>`` (or ``URL_Illum<Ch>``)
naming CellProfiler's ``Illum<Ch>.npy`` flat field of the row's plate (CorrectIlluminationCalculate's output).
They are reused as is: phenovec divides each raw image by its plate's flat field, as CellProfiler's
CorrectIlluminationApply (``Divide``) does; the index's ``illumination`` is the mapping
``{(plate, channel): local .npy path}`` that ``crop_index(illumination=)`` / ``load_illumination`` take. A plate
must name one file per channel.

Images are resolved through :mod:`phenovec.ingest.image_source`: local paths and ``file://`` URLs are used where
they are, other URLs (object stores through fsspec's backends) are copied once into a local cache: all of them
when the CSV is read (default), or with ``fetch=False`` site by site when ``ImageIndex.site_paths`` /
``site_label_path`` ask (the crop and profile stages: when, and where, the site is processed). Channels are
named without the ``Orig`` prefix (``DNA`` for ``FileName_OrigDNA``; ``OrigDNA`` is accepted too). Every
problem names the CSV, the row (0-based data row) and the column: a channel without a column, an empty file
name, a missing or unreachable image, two flat fields for one plate x channel, a repeated site.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.ingest import image_source
from phenovec.ingest.index import SITE_KEYS, ImageIndex, channel_frames

CELL_PAINTING = ("DNA", "ER", "RNA", "AGP", "Mito")
_ORIG = re.compile(r"^(?:URL|FileName)_Orig(.+)$")


def is_load_data(columns: Sequence[str]) -> bool:
    """True when the columns name images the Gallery's way (``URL_Orig<Ch>`` or ``FileName_Orig<Ch>``)."""
    return any(_ORIG.match(str(c)) for c in columns)


def load_data_channels(columns: Sequence[str]) -> list[str]:
    """The channels a LoadData table names (``Orig`` prefix removed), in column order."""
    return list(dict.fromkeys(m.group(1) for m in map(_ORIG.match, map(str, columns)) if m))


def _stem(df: pd.DataFrame, name: str, prefix: str) -> str | None:
    """The column stem of channel ``name``: ``<prefix><name>`` (``OrigDNA``), or ``name`` itself."""
    bare = name[len(prefix):] if name.startswith(prefix) else name
    for stem in (prefix + bare, bare):
        if f"URL_{stem}" in df.columns or f"FileName_{stem}" in df.columns:
            return stem
    return None


def _text(v) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()


def _column_urls(df: pd.DataFrame, stem: str, base: str, where: str) -> tuple[list[str], list[str]]:
    """Per row the image URL / path of column stem ``stem`` and the column that named it (for messages)."""
    if f"URL_{stem}" in df.columns:
        cols = [f"URL_{stem}"]
        parts = [[_text(v)] for v in df[f"URL_{stem}"]]
    else:
        cols = [f"PathName_{stem}", f"FileName_{stem}"] if f"PathName_{stem}" in df.columns else [f"FileName_{stem}"]
        parts = [[_text(v) for v in r] for r in zip(*(df[c] for c in cols))]
    urls, named = [], []
    for i, row in enumerate(parts):
        for c, v in zip(cols, row):
            if not v:
                raise ValueError(f"{where}: row {i} column {c}: empty (every site needs its {stem} image)")
        url = image_source.join(row[0], row[1]) if len(row) == 2 else row[0]
        urls.append(image_source.join(base, url))
        named.append(cols[-1])
    return urls, named


def _illumination(df: pd.DataFrame, names: Sequence[str], base: str, where: str, cache) -> dict | None:
    """``{(plate, channel): local .npy}`` from the ``Illum<Ch>`` columns, or None when the table has none."""
    if not any(str(c).startswith(("FileName_Illum", "URL_Illum")) for c in df.columns):
        return None
    plates = df["Metadata_Plate"].astype(str).to_numpy()
    wanted: dict[tuple[str, str], tuple[str, int, str]] = {}
    for name in names:
        stem = _stem(df, name, "Illum")
        if stem is None:
            raise KeyError(f"{where}: has flat-field columns but none for channel {name!r} (expected "
                           f"FileName_Illum{name} [+ PathName_Illum{name}] or URL_Illum{name})")
        urls, cols = _column_urls(df, stem, base, where)
        for i, (plate, url) in enumerate(zip(plates, urls)):
            seen = wanted.setdefault((plate, name), (url, i, cols[i]))
            if seen[0] != url:
                raise ValueError(f"{where}: row {i} column {cols[i]}: plate {plate!r} channel {name!r} names flat "
                                 f"field {url} but row {seen[1]} names {seen[0]}: one flat field per plate x channel")
    keys = list(wanted)
    local = image_source.fetch_all([wanted[k][0] for k in keys], cache,
                                   where=lambda j: f"{where}: row {wanted[keys[j]][1]} column {wanted[keys[j]][2]}")
    return {k: p for k, p in zip(keys, local)}


def index_from_load_data(df: pd.DataFrame, channels: Sequence[str] | None = None, *, where: str = "LoadData",
                         base: str = "", cache=None, check: bool = True, labels: str | None = None,
                         illumination: bool = True, fetch: bool = True) -> ImageIndex:
    """An :class:`ImageIndex` from a LoadData table (module docstring). ``channels``: names and order (default
    the five Cell Painting channels when the table has them all, else every ``Orig`` channel); ``base``: the
    folder (path or URL) relative names start from; ``cache``: the local copy folder of remote images
    (:mod:`~phenovec.ingest.image_source`); ``check``: local images must exist; ``fetch``: remote images are
    copied now (default; an unreachable one is an error naming its row and column), or (False) kept as URLs in
    ``paths`` (and label images in ``labels``) and copied site by site when :meth:`ImageIndex.site_paths` asks (a
    worker fetches only its own sites); ``labels``: a label-image column stem (``FileName_<labels>`` / ``URL_<labels>``);
    ``illumination``: read the ``Illum<Ch>`` flat fields into ``index.illumination``."""
    df = df.reset_index(drop=True)
    missing = [k for k in SITE_KEYS if k not in df.columns]
    if missing:
        raise KeyError(f"{where}: missing site column {missing[0]!r} (JUMP LoadData has Metadata_Source, "
                       "Metadata_Plate, Metadata_Well, Metadata_Site)")
    found = load_data_channels(df.columns)
    if channels is None:
        channels = list(CELL_PAINTING) if all(c in found for c in CELL_PAINTING) else found
    if not channels:
        raise ValueError(f"{where}: no image column (expected URL_Orig<Ch> or FileName_Orig<Ch>)")
    names = [c[4:] if c.startswith("Orig") and c[4:] in found else c for c in channels]
    stems = []
    for name in names:
        stem = _stem(df, name, "Orig")
        if stem is None:
            raise KeyError(f"{where}: no column for channel {name!r} (expected URL_Orig{name}, "
                           f"FileName_Orig{name} [+ PathName_Orig{name}] or FileName_{name}); channels in the file: "
                           f"{found}")
        stems.append(stem)
    dup = df.duplicated(SITE_KEYS)
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise ValueError(f"{where}: row {i} repeats site {tuple(df.loc[i, SITE_KEYS])}")
    per_channel = []
    for stem in stems:
        urls, cols = _column_urls(df, stem, base, where)
        remote = any(image_source.is_remote(u) for u in urls)
        if (check and not remote) or (remote and fetch):
            urls = image_source.fetch_all(urls, cache, where=lambda i, cols=cols: f"{where}: row {i} column {cols[i]}")
        else:
            urls = [u if image_source.is_remote(u) else image_source.local_file(u) for u in urls]
        per_channel.append(urls)
    label_paths = None
    if labels is not None:
        if f"URL_{labels}" not in df.columns and f"FileName_{labels}" not in df.columns:
            raise KeyError(f"{where}: no label-image column FileName_{labels} or URL_{labels}")
        urls, cols = _column_urls(df, labels, base, where)
        if fetch or not any(image_source.is_remote(u) for u in urls):
            label_paths = image_source.fetch_all(urls, cache, where=lambda i: f"{where}: row {i} column {cols[i]}")
        else:  # copied site by site (ImageIndex.site_label_path)
            label_paths = [u if image_source.is_remote(u) else image_source.local_file(u) for u in urls]
    meta = df[[c for c in df.columns if str(c).startswith("Metadata_")]]
    index = ImageIndex(meta, list(names), [list(p) for p in zip(*per_channel)], where,
                       frames=channel_frames(df, stems, where), labels=label_paths,
                       image_cache=None if cache is None else str(cache))
    if illumination:
        index.illumination = _illumination(df, names, base, where, cache)
    return index


def read_load_data(source: str | os.PathLike, channels: Sequence[str] | None = None, *, root=None, cache=None,
                   check: bool = True, labels: str | None = None, illumination: bool = True,
                   fetch: bool = True) -> ImageIndex:
    """Read a LoadData CSV (or Parquet) at a path or URL into an :class:`ImageIndex` (see
    :func:`index_from_load_data`); relative image names start from ``root`` (default: the CSV's folder)."""
    src = str(source)
    data = image_source.read_bytes(src)
    try:
        if src.lower().endswith(".parquet"):
            df = pd.read_parquet(io.BytesIO(data))
        else:
            df = pd.read_csv(io.BytesIO(data), compression="gzip" if src.lower().endswith(".gz") else None,
                             dtype={k: str for k in ("Metadata_Plate", "Metadata_Well", "Metadata_Source")})
    except Exception as e:  # noqa: BLE001 - a file that is no table: say which
        raise ValueError(f"{src}: cannot read as a LoadData table ({type(e).__name__}: {e})") from None
    if root is None:
        root = src.rstrip("/").rsplit("/", 1)[0] if image_source.protocol(src) else str(Path(src).parent)
    return index_from_load_data(df, channels, where=src, base=str(root), cache=cache, check=check, labels=labels,
                                illumination=illumination, fetch=fetch)
