"""OME-Zarr high-content-screening plates (NGFF HCS, v0.4 on Zarr v2 and v0.5 on Zarr v3) as an image source.

The NGFF HCS layout (https://ngff.openmicroscopy.org/latest/#hcs-layout), read with ``zarr``:

- the plate group's ``plate`` metadata (v0.5: under ``ome``) lists ``rows``, ``columns`` and ``wells``
  (``{"path": "A/1", ...}``);
- each well group's ``well`` metadata lists its fields (``images``: ``{"path": "0"}``, ...);
- each field is an image group with ``multiscales`` (axes among ``t``, ``c``, ``z``, ``y``, ``x``; level 0 =
  ``datasets[0]``, the full resolution) and ``omero.channels[].label`` naming the channels.

:class:`OmeZarrPlate` yields per site the channel images as a uint16 C x H x W array, the same array the TIFF path
decodes (``phenovec._core.decode_image`` per channel). Sites are named as an image index names them:
``Metadata_Plate`` (the plate's ``name``, else the store's folder name), ``Metadata_Well`` (row + 2-digit
column: ``A01``), ``Metadata_Site`` (1-based field). A ``t`` or ``z`` axis must have one plane (an error names
the field otherwise). :func:`plate_index` writes each site's channels once as TIFFs into a cache folder so that
``crop`` / ``profile`` (whose Rust decoder reads files) run on the plate: ``read_image_index`` does this for a
``.zarr`` store (a local store rewritten in place is copied again; a URL's store is taken as immutable), all
sites when the index is read, or (``fetch=False``) each site's when it is processed (:func:`field_url`). The
store may be a local folder or any fsspec URL zarr opens.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence
from urllib.parse import quote, unquote

import numpy as np
import pandas as pd


def _ome(attrs) -> dict:
    a = dict(attrs)
    return dict(a.get("ome", a))


def _well_name(row: str, col: str) -> str:
    return f"{row}{int(col):02d}" if str(col).isdigit() else f"{row}{col}"


class OmeZarrPlate:
    """An NGFF HCS plate (module docstring): :attr:`sites` (one row per field), :attr:`channels`,
    :meth:`read_site`."""

    def __init__(self, store: str | os.PathLike):
        import zarr

        self.store = str(store)
        try:
            self.root = zarr.open_group(self.store, mode="r")
        except Exception as e:  # noqa: BLE001 - not a zarr group: say which
            raise ValueError(f"{self.store}: not a Zarr group ({type(e).__name__}: {e})") from None
        meta = _ome(self.root.attrs)
        if "plate" not in meta:
            raise ValueError(f"{self.store}: no NGFF 'plate' metadata (an HCS plate lists rows, columns and wells)")
        plate = meta["plate"]
        self.version = str(meta.get("version", plate.get("version", "")))
        name = plate.get("name") or Path(self.store.rstrip("/")).name.split(".")[0]
        rows = [r["name"] for r in plate.get("rows", [])]
        cols = [c["name"] for c in plate.get("columns", [])]
        records, self._fields = [], []
        for w in plate.get("wells", []):
            path = w["path"]
            if "rowIndex" in w and "columnIndex" in w:
                r, c = rows[w["rowIndex"]], cols[w["columnIndex"]]
            else:
                r, c = path.split("/")[:2]
            try:
                well = _ome(self.root[path].attrs).get("well")
            except KeyError:
                raise ValueError(f"{self.store}: well {path} listed in the plate metadata is missing") from None
            if well is None:
                raise ValueError(f"{self.store}/{path}: no NGFF 'well' metadata")
            for k, im in enumerate(well.get("images", [])):
                records.append({"Metadata_Plate": str(name), "Metadata_Well": _well_name(r, c), "Metadata_Site": k + 1,
                                "Metadata_Field": f"{path}/{im['path']}"})
                self._fields.append(f"{path}/{im['path']}")
        if not records:
            raise ValueError(f"{self.store}: the plate lists no field")
        self.sites = pd.DataFrame(records)
        self.channels = self._channel_names(self._fields[0])

    def _image(self, field: str):
        """(level-0 array, axis names) of one field."""
        return _field_image(self.root, self.store, field)

    def _channel_names(self, field: str) -> list[str]:
        return _channel_names(self.root, self.store, field)

    def __len__(self) -> int:
        return len(self.sites)

    def channel_positions(self, channels: Sequence[str] | None) -> list[int]:
        if channels is None:
            return list(range(len(self.channels)))
        missing = [c for c in channels if c not in self.channels]
        if missing:
            raise KeyError(f"{self.store}: no channel {missing[0]!r} (the plate's omero labels are {self.channels})")
        return [self.channels.index(c) for c in channels]

    def read_site(self, s: int, channels: Sequence[str] | None = None) -> np.ndarray:
        """Site ``s`` (row of :attr:`sites`) as uint16 C x H x W, channels in ``channels`` order (default all)."""
        pos = self.channel_positions(channels)
        return _read_field(self.root, self.store, self._fields[s])[pos]


def _field_image(root, store: str, field: str):
    """(level-0 array, axis names) of one field of an open plate group."""
    try:
        grp = root[field]
    except KeyError:
        raise ValueError(f"{store}: field {field} listed in its well is missing") from None
    ms = _ome(grp.attrs).get("multiscales")
    if not ms:
        raise ValueError(f"{store}/{field}: no NGFF 'multiscales' metadata")
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in ms[0].get("axes", ["t", "c", "z", "y", "x"])]
    arr = grp[ms[0]["datasets"][0]["path"]]
    if len(axes) != arr.ndim or "c" not in axes or axes[-2:] != ["y", "x"]:
        raise ValueError(f"{store}/{field}: axes {axes} of an array of shape {arr.shape}; expected a "
                         "channel axis 'c' and ... 'y', 'x' last")
    return arr, axes


def _channel_names(root, store: str, field: str) -> list[str]:
    arr, axes = _field_image(root, store, field)
    n = arr.shape[axes.index("c")]
    labels = [str(c.get("label", i)) for i, c in enumerate(_ome(root[field].attrs).get("omero", {})
                                                           .get("channels", []))]
    return labels if len(labels) == n else [str(i) for i in range(n)]


def _read_field(root, store: str, field: str, channel: int | None = None) -> np.ndarray:
    """A field as uint16 C x H x W (every channel), or one channel (position ``channel``) as 1 x H x W: only
    its planes are read."""
    arr, axes = _field_image(root, store, field)
    index: list = []
    for ax, n in zip(axes, arr.shape):
        if ax in ("t", "z"):
            if n != 1:
                raise ValueError(f"{store}/{field}: axis {ax!r} has {n} planes; phenovec reads one")
            index.append(0)
        elif ax == "c" and channel is not None:
            index.append(slice(channel, channel + 1))
        else:
            index.append(slice(None))
    data = np.asarray(arr[tuple(index)])
    kept = [a for a in axes if a not in ("t", "z")]
    data = np.moveaxis(data, kept.index("c"), 0)
    if data.ndim != 3:
        raise ValueError(f"{store}/{field}: axes {axes}: expected c, y, x after t and z")
    if data.dtype != np.uint16:
        if data.dtype.kind not in "ui" or data.size and (data.min() < 0 or data.max() > 65535):
            raise ValueError(f"{store}/{field}: pixels of type {data.dtype} do not fit uint16")
        data = data.astype(np.uint16)
    return np.ascontiguousarray(data)


SCHEME = "omezarr"  # a field's channel named as an image (phenovec.ingest.image_source fetches it: field_url)
_ROOTS: dict = {}  # per process: the open plate groups of the stores fetched from (a few)
_ROOTS_KEPT = 4


def field_url(store: str, identity: str, field: str, channel: str) -> str:
    """``omezarr://<store>/<identity>/<field>/<channel>.tif`` (each part URI-escaped): one channel of one field as
    an image name that :func:`phenovec.ingest.image_source.fetch` writes into the image cache as a TIFF when its
    site is processed (:func:`write_field_channel`). ``identity`` (the store's, :func:`_store_identity` hashed)
    keys the cache, so a local plate rewritten in place is read again."""
    return f"{SCHEME}://" + "/".join(quote(str(x), safe="") for x in (store, identity, field)) + \
        f"/{quote(str(channel), safe='')}.tif"


def write_field_channel(url: str, target) -> None:
    """Write the channel named by a :func:`field_url` as an uncompressed uint16 TIFF at ``target``."""
    import tifffile
    import zarr

    parts = url[len(SCHEME) + 3:].split("/")
    if not url.startswith(f"{SCHEME}://") or len(parts) != 4 or not parts[3].endswith(".tif"):
        raise ValueError(f"{url}: not an OME-Zarr field URL ({SCHEME}://<store>/<identity>/<field>/<channel>.tif)")
    store, _, field, channel = (unquote(p) for p in parts[:3] + [parts[3][:-4]])
    root = _ROOTS.get(store)
    if root is None:
        try:
            root = zarr.open_group(store, mode="r")
        except Exception as e:  # noqa: BLE001 - not a zarr group: say which
            raise ValueError(f"{store}: not a Zarr group ({type(e).__name__}: {e})") from None
        while len(_ROOTS) >= _ROOTS_KEPT:
            _ROOTS.pop(next(iter(_ROOTS)))
        _ROOTS[store] = root
    names = _channel_names(root, store, field)
    if channel not in names:
        raise KeyError(f"{store}/{field}: no channel {channel!r} (its omero labels are {names})")
    tifffile.imwrite(target, _read_field(root, store, field, names.index(channel))[0])


def _store_identity(store) -> str:
    """The cache key of a store: a local one by its absolute path and the time its root metadata was written (a
    plate rewritten in place gets new copies); a URL by itself (object stores such as the Gallery are immutable)."""
    name = str(store)
    if "://" in name:
        return name
    meta = [Path(name) / m for m in ("zarr.json", ".zattrs", ".zgroup") if (Path(name) / m).is_file()]
    return os.path.abspath(name) + "".join(f"|{m.name}:{m.stat().st_mtime_ns}" for m in meta)


def plate_index(store: str | os.PathLike, channels: Sequence[str], cache: str | os.PathLike | None = None,
                fetch: bool = True):
    """An :class:`~phenovec.ingest.index.ImageIndex` of an OME-Zarr plate: each site's ``channels`` written once as
    uncompressed TIFFs (atomically) under ``cache`` (default: the image cache of
    :mod:`~phenovec.ingest.image_source`, one folder per store), read by the crop and profile stages as files.
    ``fetch=False``: nothing is read but the plate's metadata; each site's channels are named by
    :func:`field_url` and written into the cache when (and where) the site is processed."""
    import tifffile

    from phenovec.ingest.image_source import default_cache
    from phenovec.ingest.index import ImageIndex

    plate = OmeZarrPlate(store)
    plate.channel_positions(channels)  # every channel named: checked before anything is written
    key = hashlib.sha256(_store_identity(store).encode())
    if not fetch:
        urls = [[field_url(plate.store, key.hexdigest()[:16], f, c) for c in channels] for f in plate._fields]
        return ImageIndex(plate.sites.copy(), list(channels), urls, plate.store,
                          image_cache=None if cache is None else str(cache))
    folder = Path(default_cache() if cache is None else cache) / f"ome-zarr-{key.hexdigest()[:16]}"
    paths = []
    for s in range(len(plate)):
        site = plate.sites.iloc[s]
        names = [folder / f"{site.Metadata_Plate}_{site.Metadata_Well}_s{site.Metadata_Site}_{c}.tif" for c in channels]
        if not all(p.is_file() for p in names):
            folder.mkdir(parents=True, exist_ok=True)
            for p, plane in zip(names, plate.read_site(s, channels)):
                tmp = p.with_name(f".{p.name}.{os.getpid()}.part")
                tifffile.imwrite(tmp, plane)
                os.replace(tmp, p)
        paths.append([str(p) for p in names])
    return ImageIndex(plate.sites.copy(), list(channels), paths, plate.store)


def is_ome_zarr(path: str | os.PathLike) -> bool:
    """True for a local folder holding a Zarr group (``zarr.json`` or ``.zgroup``)."""
    p = Path(path)
    return p.is_dir() and ((p / "zarr.json").is_file() or (p / ".zgroup").is_file())
