"""Field tiles for field-level models: whole fields (MOAProfiler; optionally block-mean downsampled) or fixed-size
views (GapNet) of every site of an image index, into one chunked Zarr array, resumably.

Per site, in this order: decode every channel (its ``Frame_<ch>`` page); divide by the plate's illumination
functions (``illumination``: a folder of :func:`phenovec.ingest.illumination.compute_illumination` or a mapping
``{(plate, channel): .npy}``); rescale each channel of the full field to [0, 1] (``intensity``:
``("percentile", lo, hi)`` numpy's linear percentiles of that image and channel, or ``("range", lo, hi)``);
then either downsample by ``factor`` (each ``f x f`` block -> its mean, float64 sum / f^2; H and W must be
divisible by f) or cut ``views = (tile_h, tile_w, stride)`` windows (top-left corners every ``stride`` pixels while
the window fits, row of corners first; no padding). Without illumination / intensity / pages the Rust bindings
``_core.field_tiles`` / ``_core.field_views`` do the whole site; otherwise the same steps run on the corrected
float32 stack (``_core.correct_illumination``, ``_core.rescale_percentile`` / ``rescale_range``).

Output ``dtype``: None -> uint16 when the values are still raw pixels (no illumination, no intensity, factor 1),
else float32. ``"float32"`` / ``"float16"``: a cast. ``"uint16"`` / ``"uint8"``: with ``intensity`` the [0, 1]
values are scaled to the type's maximum and rounded half to even (``rint(v * 65535)``, ``rint(v * 255)``, the
product in float32); without it ``uint16`` rounds half to even and clips to [0, 65535] (corrected or averaged
pixels) and ``uint8`` is refused (raw 16-bit pixels do not fit 8 bits without an explicit rescale); ``float16``
of a value beyond +-65504 is an error. These are the crops' rules (``rust/src/site.rs``).

Output folder ``OUT``:

- ``tiles.zarr``: Zarr v3 array (N x C x h x w), N = sites x views per site (1 for whole fields), site ``s``'s
  views in rows ``s * V .. (s + 1) * V``; chunks of ``chunk_sites`` whole sites; its attributes hold the
  configuration (channels, factor, views, illumination source with each file's sha256, intensity, dtype,
  phenovec version);
- ``tiles.parquet``: one row per tile: the site's ``Metadata_*`` columns, ``view``, ``y0``, ``x0`` (top-left
  corner in the original field's pixels), ``row`` (its index in ``tiles.zarr``);
- ``manifest.json``: configuration, tile shape, chunk groups done.

Resumable per chunk: a group of ``chunk_sites`` sites is written as exactly one chunk, then its table part
(``tiles/group-NNNNN.parquet``) and ``manifest.json`` are replaced atomically; a crash leaves at most one
uncommitted chunk, which a rerun (same configuration) rewrites; done groups are skipped. Another configuration
is refused.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from phenovec.ingest.index import ImageIndex
from phenovec.io.atomic import output_folder, write_json_atomic

DTYPES = ("uint16", "uint8", "float16", "float32")


@dataclass
class TileResult:
    out: Path
    tiles: int
    sites: int
    resumed_sites: int


def normalize_intensity(intensity) -> tuple | None:
    """``None`` | ``("percentile", lo, hi)`` (0 <= lo < hi <= 100) | ``("range", lo, hi)`` (finite lo < hi),
    as a tuple (``kind``, float, float); anything else is a ValueError naming the value."""
    if intensity is None:
        return None
    try:
        kind, lo, hi = intensity
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError(f"intensity must be ('percentile', lo, hi) or ('range', lo, hi), got {intensity!r}") from None
    if kind == "percentile":
        if not (0 <= lo < hi <= 100):
            raise ValueError(f"intensity percentiles need 0 <= lo < hi <= 100, got {lo}, {hi}")
    elif kind == "range":
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"intensity range needs finite lo < hi, got {lo}, {hi}")
    else:
        raise ValueError(f"intensity kind must be 'percentile' or 'range', got {kind!r}")
    return (kind, lo, hi)


def illumination_config(illumination) -> str | dict | None:
    """How an illumination source is recorded: the folder, or the mapping as ``{"plate/channel": path}``."""
    if illumination is None:
        return None
    if isinstance(illumination, dict):
        return {f"{k[0]}/{k[1]}": str(v) for k, v in sorted(illumination.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1])))}
    return str(illumination)


def view_origins(height: int, width: int, tile_h: int, tile_w: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of the view grid (the Rust ``FieldTile::view_origins`` rule)."""
    if min(tile_h, tile_w, stride) < 1:
        raise ValueError(f"view size {tile_h} x {tile_w} and stride {stride} must all be at least 1")
    if tile_h > height or tile_w > width:
        raise ValueError(f"view of {tile_h} x {tile_w} (H x W) does not fit in the field of {height} x {width}")
    return [(r, c) for r in range(0, height - tile_h + 1, stride) for c in range(0, width - tile_w + 1, stride)]


def to_dtype(x: np.ndarray, dtype: str, rescaled: bool) -> np.ndarray:
    """The output cast of the module docstring (the rule of the crops, ``crate::site::OutDtype``: the product
    ``v * 255`` / ``v * 65535`` in float32, then ``np.rint``)."""
    if dtype == "float32":
        return x.astype(np.float32)
    if dtype == "float16":
        big = np.abs(x) > np.finfo(np.float16).max
        if big.any():
            v, c = np.argwhere(big)[0][:2]
            raise ValueError(f"float16 cannot hold {x[tuple(np.argwhere(big)[0])]} (tile {v}, channel {c}); "
                             "rescale the intensities or use float32")
        return x.astype(np.float16)
    if dtype == "uint16" and x.dtype == np.uint16:
        return x
    if rescaled:
        top = np.float32(65535.0 if dtype == "uint16" else 255.0)
        return np.rint(np.asarray(x, np.float32) * top).astype(dtype)
    if dtype == "uint8":
        raise ValueError("dtype uint8 needs an intensity rescale (percentile or range) of the 16-bit pixels")
    return np.clip(np.rint(x), 0, 65535).astype(np.uint16)


def site_stack(paths, frames=None) -> np.ndarray:
    """float32 C x H x W of a site's channel images (page ``frames[c]`` of each, default 0); channels of different
    sizes are a ValueError naming the files."""
    from phenovec import _core

    if frames is None or not any(frames):
        return _core.field_tiles([str(p) for p in paths], 1)  # exact for 16-bit pixels; checks sizes
    from phenovec.ingest.illumination import read_channel

    planes = [read_channel(p, f) for p, f in zip(paths, frames)]
    for p, a in zip(paths, planes):
        if a.shape != planes[0].shape:
            raise ValueError(f"{p}: channel image is {a.shape} (H, W) but {paths[0]} is {planes[0].shape}")
    return np.stack(planes).astype(np.float32)


def block_mean(stack: np.ndarray, factor: int, where) -> np.ndarray:
    """C x H x W -> float32 C x H/f x W/f: each f x f block -> its mean (float64 sum / f^2), as
    ``_core.field_tiles``; H and W must be divisible by f (else a ValueError naming ``where``)."""
    c, h, w = stack.shape
    f = int(factor)
    if h % f or w % f:
        raise ValueError(f"site {where}: field of {h} x {w} (H x W) is not divisible by the downsampling factor {f}")
    if f == 1:
        return np.asarray(stack, dtype=np.float32)
    return (stack.astype(np.float64).reshape(c, h // f, f, w // f, f).sum(axis=(2, 4)) / (f * f)).astype(np.float32)


class SiteTiler:
    """Computes one site's tiles (module docstring) with a per-plate cache of illumination functions."""

    def __init__(self, index: ImageIndex, factor: int, views, illumination, intensity, dtype: str):
        self.index, self.factor, self.views = index, factor, views
        self.illumination, self.intensity, self.dtype = illumination, intensity, dtype
        self._flats: tuple[str, np.ndarray] | None = None  # the last plate's (sites usually come plate by plate)

    def flats(self, plate, shape) -> np.ndarray:
        from phenovec.ingest.illumination import load_illumination

        if self._flats is None or self._flats[0] != str(plate):
            self._flats = (str(plate), load_illumination(self.illumination, plate, self.index.channels)[0])
        flat = self._flats[1]
        if tuple(flat.shape[1:]) != tuple(shape):
            raise ValueError(f"illumination for plate {plate!r} is {tuple(flat.shape[1:])} (H, W) but the images of "
                             f"that plate are {tuple(shape)}")
        return flat

    def __call__(self, s: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        from phenovec import _core

        idx, paths = self.index, self.index.paths[s]
        frames = idx.site_frames(s)
        if self.illumination is None and self.intensity is None and frames is None:
            if self.views is not None:
                th, tw, st = self.views
                tiles = _core.field_views(paths, th, tw, st)
                first = _core.decode_image(paths[0])  # corners only; the binding checked every channel's size
                origins = view_origins(first.shape[0], first.shape[1], th, tw, st)
            else:
                tiles = _core.field_tiles(paths, self.factor)[None]
                origins = [(0, 0)]
            return to_dtype(tiles, self.dtype, rescaled=False), origins
        stack = site_stack(paths, frames)
        if self.illumination is not None:
            flat = self.flats(idx.sites.iloc[s]["Metadata_Plate"], stack.shape[1:])
            stack = _core.correct_illumination(stack, flat)
        if self.intensity is not None:
            kind, lo, hi = self.intensity
            stack = (_core.rescale_percentile if kind == "percentile" else _core.rescale_range)(stack, lo, hi)
        c, h, w = stack.shape
        if self.views is not None:
            th, tw, st = self.views
            origins = view_origins(h, w, th, tw, st)
            tiles = np.stack([stack[:, r : r + th, q : q + tw] for r, q in origins])
        else:
            tiles = block_mean(stack, self.factor, paths[0])
            tiles, origins = tiles[None], [(0, 0)]
        return to_dtype(tiles, self.dtype, rescaled=self.intensity is not None), origins


def tile_index(
    index: ImageIndex,
    out: str | os.PathLike,
    factor: int = 1,
    views: tuple[int, int, int] | None = None,
    illumination=None,
    intensity=None,
    dtype: str | None = None,
    chunk_sites: int = 1,
    progress: bool | None = None,
) -> TileResult:
    """Tile every site of ``index`` into ``out`` (see the module docstring for steps, layout and resumability)."""
    import zarr
    from tqdm.auto import tqdm

    import phenovec

    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor}")
    factor = int(factor)
    if views is not None:
        if factor != 1:
            raise ValueError("give either views (GapNet) or a downsampling factor (MOAProfiler), not both")
        if len(views) != 3 or min(int(v) for v in views) < 1:
            raise ValueError(f"views must be (tile_h, tile_w, stride), all >= 1, got {views!r}")
        views = tuple(int(v) for v in views)
    if chunk_sites < 1:
        raise ValueError(f"chunk_sites must be >= 1, got {chunk_sites}")
    intensity = normalize_intensity(intensity)
    raw = illumination is None and intensity is None and factor == 1
    if dtype is None:
        dtype = "uint16" if raw else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype == "uint8" and intensity is None:
        raise ValueError("dtype uint8 needs an intensity rescale (percentile or range) of the 16-bit pixels")
    if len(index) == 0:
        raise ValueError(f"{index.source}: the image index has no site")
    out = Path(out)
    with output_folder(out) as run:
        (out / "tiles").mkdir(exist_ok=True)
        config = {"channels": list(index.channels), "factor": factor, "views": list(views) if views else None,
                  "illumination": illumination_config(illumination), "intensity": list(intensity) if intensity else None,
                  "dtype": dtype, "chunk_sites": int(chunk_sites), "sites": len(index)}
        tiler = SiteTiler(index, factor, views, illumination, intensity, dtype)
        mpath = out / "manifest.json"
        first = None
        if mpath.exists():
            manifest = json.loads(mpath.read_text())
            if manifest["config"] != config:
                raise ValueError(f"{out}: holds tiles made with another configuration {manifest['config']}; "
                                 f"use a new output folder (asked: {config})")
            arr = zarr.open_array(str(out / "tiles.zarr"), mode="r+")
        else:
            first = tiler(0)
            per_site, tail = first[0].shape[0], first[0].shape[1:]
            if (out / "tiles.zarr").exists():
                shutil.rmtree(out / "tiles.zarr")
            attrs = {**config, "tile_shape": list(tail), "views_per_site": per_site,
                     "phenovec_version": getattr(phenovec, "__version__", "unknown")}
            if illumination is not None:
                from phenovec.ingest.illumination import illumination_provenance

                attrs["illumination_files"] = {p: illumination_provenance(illumination, p, index.channels)
                                               for p in dict.fromkeys(index.sites["Metadata_Plate"].astype(str))}
            arr = zarr.create_array(str(out / "tiles.zarr"), shape=(len(index) * per_site, *tail),
                                    chunks=(chunk_sites * per_site, *tail), dtype=dtype, fill_value=0, attributes=attrs)
            manifest = {"config": config, "views_per_site": per_site, "tile_shape": list(tail), "done": [],
                        "complete": False}
            write_json_atomic(mpath, manifest)
        per_site, tail = int(manifest["views_per_site"]), tuple(manifest["tile_shape"])
        done = set(manifest["done"])
        run.resumable = bool(done)
        groups = range((len(index) + chunk_sites - 1) // chunk_sites)
        resumed = sum(min(chunk_sites, len(index) - g * chunk_sites) for g in done)
        meta_cols = list(index.sites.columns)
        bar = tqdm(total=len(index) - resumed, desc="tile sites", unit="site", disable=None if progress is None else not progress)
        for g in groups:
            if g in done:
                continue
            sites = range(g * chunk_sites, min((g + 1) * chunk_sites, len(index)))
            blocks, parts = [], []
            for s in sites:
                tiles, origins = first if (s == 0 and first is not None) else tiler(s)
                if tiles.shape != (per_site, *tail):
                    raise ValueError(f"site {s} ({index.paths[s][0]}): tiles of shape {tiles.shape} but the first site "
                                     f"gave {(per_site, *tail)}: all fields must have one size")
                blocks.append(tiles)
                meta = index.sites.iloc[s]
                part = pd.DataFrame({k: np.repeat(meta[k], per_site) for k in meta_cols})
                part["view"] = np.arange(per_site)
                part["y0"] = [o[0] for o in origins]
                part["x0"] = [o[1] for o in origins]
                part["row"] = s * per_site + np.arange(per_site)
                parts.append(part)
                bar.update(1)
            arr[sites.start * per_site : sites.stop * per_site] = np.concatenate(blocks)
            tmp = out / "tiles" / f".group-{g:05d}.tmp"
            pd.concat(parts, ignore_index=True).to_parquet(tmp, index=False)
            os.replace(tmp, out / "tiles" / f"group-{g:05d}.parquet")
            done.add(g)
            run.resumable = True
            manifest["done"] = sorted(done)
            write_json_atomic(mpath, manifest)
        bar.close()
        table = pd.concat([pd.read_parquet(out / "tiles" / f"group-{g:05d}.parquet") for g in groups], ignore_index=True)
        table.to_parquet(out / ".tiles.parquet.tmp", index=False)
        os.replace(out / ".tiles.parquet.tmp", out / "tiles.parquet")
        manifest["complete"] = True
        write_json_atomic(mpath, manifest)
    return TileResult(out, len(table), len(index), resumed)
