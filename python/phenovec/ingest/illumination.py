"""Illumination functions (flat fields) per plate x channel, computed as DeepProfiler's ``prepare`` does.

DeepProfiler (cytomining/DeepProfiler ``deepprofiler/dataset/illumination_statistics.py`` +
``illumination_correction.py``, "based on Singh et al. 2014" / CellProfiler CorrectIlluminationCalculate),
per plate and channel:

1. every image of the plate is shrunk to ``(H / down_scale_factor, W / down_scale_factor)`` with
   ``skimage.transform.resize(img, ..., mode="reflect", anti_aliasing=True, preserve_range=True)`` and the
   thumbnails are averaged (float64 sum in index order, divided by the count); all images of a plate must have
   one size;
2. the mean thumbnail, cast to uint16 (``astype``: truncation), is median filtered with
   ``skimage.filters.median(..., skimage.morphology.disk(median_filter_size / 2))`` (skimage >= 0.16:
   ``scipy.ndimage.median_filter``, mode ``nearest``);
3. the result is resized back to ``(H, W)`` with the same ``resize`` call;
4. ``robust_minimum = scipy.stats.scoreatpercentile(f, 2)`` (numpy's linear percentile); the function is
   ``max(f, robust_minimum) / robust_minimum`` (so >= 1). Corrected image = raw / function.

Here ``resize`` is reproduced with the scipy.ndimage calls scikit-image 0.26 makes (gaussian anti-aliasing
with sigma ``max(0, (factor - 1) / 2)`` in ``mirror`` mode, then ``ndimage.zoom(order=1, mode="mirror",
grid_mode=True)``, then clipping to the input's range), per channel; no scikit-image at run time. The test
runs DeepProfiler's code as written (with scikit-image) and compares.

Output folder ``DIR``: ``{plate}/{plate}_{channel}.npy`` (float32 H x W, written atomically) and
``illumination.json`` (parameters, channels, per plate its shape, sites and each file's sha256; rewritten
atomically after every plate: a rerun with the same parameters skips the plates it lists, another parameter
set is refused). DeepProfiler itself pickles all of a plate's statistics in ``{plate}/{plate}.pkl``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from phenovec.ingest.index import ImageIndex
from phenovec.io.atomic import atomic_path, output_folder, write_json_atomic
from phenovec.io.digest import file_sha256

PARAMS_FILE = "illumination.json"


def flat_field_path(out_dir: str | os.PathLike, plate, channel: str) -> Path:
    """Where the function of ``plate`` x ``channel`` lives in an illumination folder."""
    p = str(plate)
    if not p or "/" in p or "\\" in p or p in (".", ".."):
        raise ValueError(f"plate name {p!r} cannot name an illumination file")
    return Path(out_dir) / p / f"{p}_{channel}.npy"


def read_channel(path: str, frame: int = 0) -> np.ndarray:
    """One channel image as uint16 H x W: page ``frame`` of a TIFF (or a PNG), by the Rust decoder."""
    from phenovec import _core

    if not frame:
        return _core.decode_image(path)
    try:
        return _core.decode_image(path, frame)
    except TypeError:  # a binding built before decode_image took a page: tifffile reads it
        import tifffile

        with tifffile.TiffFile(path) as tf:
            if frame >= len(tf.pages):
                raise ValueError(f"{path}: no page {frame} (the file has {len(tf.pages)})") from None
            return np.asarray(tf.pages[frame].asarray())


def resize_like_skimage(image: np.ndarray, output_shape: tuple[float, float]) -> np.ndarray:
    """``skimage.transform.resize(image, output_shape, mode="reflect", anti_aliasing=True,
    preserve_range=True)`` for a 2-D image (scikit-image 0.26's steps, float64 out)."""
    from scipy import ndimage as ndi

    x = image if image.dtype.char in "df" else image.astype(np.float64)
    factors = np.divide(x.shape, output_shape)
    sigma = np.maximum(0, (factors - 1) / 2)
    filtered = ndi.gaussian_filter(x, sigma, mode="mirror")
    out = ndi.zoom(filtered, [1 / f for f in factors], order=1, mode="mirror", grid_mode=True)
    np.clip(out, np.min(x), np.max(x), out=out)
    return out


def disk(radius: float) -> np.ndarray:
    """``skimage.morphology.disk(radius)``: ``X**2 + Y**2 <= radius**2`` on ``arange(-radius, radius + 1)``."""
    L = np.arange(-radius, radius + 1)
    X, Y = np.meshgrid(L, L)
    return (X**2 + Y**2) <= radius**2


def illumination_function(mean_thumb: np.ndarray, shape: tuple[int, int], median_filter_size: float,
                          where: str = "") -> np.ndarray:
    """Steps 2-4 of the module docstring on one channel's mean thumbnail; float64 ``shape`` out."""
    from scipy import ndimage as ndi

    if not np.isfinite(mean_thumb).all() or mean_thumb.min() < 0 or mean_thumb.max() >= 65536:
        raise ValueError(f"{where}: mean image outside [0, 65536) (DeepProfiler casts it to uint16)")
    med = ndi.median_filter(mean_thumb.astype(np.uint16), footprint=disk(median_filter_size / 2), mode="nearest")
    f = resize_like_skimage(med, shape)
    robust_minimum = np.percentile(f, 2)
    if not robust_minimum > 0:
        raise ValueError(f"{where}: the smoothed mean image's 2nd percentile is {robust_minimum}; "
                         "an illumination function needs a positive robust minimum (is the channel empty?)")
    return np.maximum(f, robust_minimum) / robust_minimum


def _write_npy_atomic(path: Path, a: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, a)


def compute_illumination(
    index: ImageIndex,
    out_dir: str | os.PathLike,
    down_scale_factor: float = 4,
    median_filter_size: float = 24,
    plates: Sequence | None = None,
    progress: bool | None = None,
) -> dict[tuple[str, str], Path]:
    """Compute and save the illumination function of every plate x channel of ``index`` (module docstring).

    Returns ``{(plate, channel): path}`` for all plates (``plates`` restricts them). DeepProfiler's defaults:
    ``down_scale_factor`` 4, ``median_filter_size`` 24 (a disk of radius 12 on the thumbnail)."""
    from tqdm.auto import tqdm

    if down_scale_factor <= 0 or median_filter_size <= 0:
        raise ValueError(f"down_scale_factor ({down_scale_factor}) and median_filter_size ({median_filter_size}) "
                         "must be > 0")
    params = {"method": "deepprofiler", "down_scale_factor": down_scale_factor,
              "median_filter_size": median_filter_size, "channels": list(index.channels)}
    out = Path(out_dir)
    ppath = out / PARAMS_FILE
    record = json.loads(ppath.read_text()) if ppath.exists() else {"params": params, "plates": {}}
    if record["params"] != params:
        raise ValueError(f"{out}: holds illumination functions made with {record['params']}; use another folder "
                         f"(asked: {params})")
    if len(index) == 0:
        raise ValueError(f"{index.source}: the image index has no site")
    plate_col = index.sites["Metadata_Plate"].astype(str).to_numpy()
    wanted = list(dict.fromkeys(plate_col)) if plates is None else [str(p) for p in plates]
    for p in wanted:
        if p not in set(plate_col):
            raise KeyError(f"{index.source}: no site of plate {p!r}")
    with output_folder(out) as run:
        run.resumable = bool(record["plates"])
        frames = index.frames
        result: dict[tuple[str, str], Path] = {}
        sites_total = sum(int((plate_col == p).sum()) for p in wanted if p not in record["plates"])
        bar = tqdm(total=sites_total, desc="illumination", unit="site",
                   disable=None if progress is None else not progress)
        for plate in wanted:
            paths = {c: flat_field_path(out, plate, c) for c in index.channels}
            done = record["plates"].get(plate)
            if done and all(paths[c].exists() for c in index.channels):
                result.update({(plate, c): paths[c] for c in index.channels})
                continue
            rows = np.flatnonzero(plate_col == plate)
            sums: list[np.ndarray | None] = [None] * len(index.channels)
            shape = None
            for s in rows:
                for ci, c in enumerate(index.channels):
                    path = index.paths[s][ci]
                    img = read_channel(path, int(frames[s][ci]) if frames is not None else 0)
                    if shape is None:
                        shape = img.shape
                    elif img.shape != shape:
                        raise ValueError(f"{path}: image of plate {plate!r} channel {c} is {img.shape} (H, W) but "
                                         f"the plate's first image is {shape}: a plate's images must share one size")
                    thumb = resize_like_skimage(img.astype(np.float64),
                                                (shape[0] / down_scale_factor, shape[1] / down_scale_factor))
                    sums[ci] = thumb if sums[ci] is None else sums[ci] + thumb
                bar.update(1)
            files = {}
            for ci, c in enumerate(index.channels):
                mean = sums[ci] / len(rows)
                func = illumination_function(mean, shape, median_filter_size, where=f"plate {plate!r} channel {c}")
                _write_npy_atomic(paths[c], func.astype(np.float32))
                files[c] = {"file": str(paths[c].relative_to(out)), "sha256": file_sha256(paths[c])}
                result[(plate, c)] = paths[c]
            record["plates"][plate] = {"shape": list(shape), "sites": int(len(rows)), "files": files}
            write_json_atomic(ppath, record)
            run.resumable = True
        bar.close()
    return result


def flat_field_file(source, plate, channel: str) -> Path:
    """The ``.npy`` path of ``plate`` x ``channel`` in ``source`` (a folder or a ``{(plate, channel): path}``
    mapping); a KeyError / FileNotFoundError names the plate, channel and path."""
    if isinstance(source, Mapping):
        key = (str(plate), str(channel))
        hit = next((v for k, v in source.items() if (str(k[0]), str(k[1])) == key), None)
        if hit is None:
            raise KeyError(f"illumination: no flat field for plate {plate!r} channel {channel!r} in the mapping")
        path = Path(hit)
    else:
        path = flat_field_path(source, plate, channel)
    if not path.is_file():
        raise FileNotFoundError(f"illumination: no flat field for plate {plate!r} channel {channel!r}: {path} is missing")
    return path


def illumination_provenance(source, plate, channels: Sequence[str]) -> list[dict]:
    """Per channel ``{"channel", "path", "sha256"}`` of the flat fields :func:`load_illumination` would read."""
    out = []
    for c in channels:
        path = flat_field_file(source, plate, c)
        out.append({"channel": c, "path": str(path), "sha256": file_sha256(path)})
    return out


def load_illumination(source, plate, channels: Sequence[str], shape: tuple[int, int] | None = None
                      ) -> tuple[np.ndarray, list[dict]]:
    """The flat fields of ``plate`` as float32 C x H x W (``channels`` order) and, per channel, its provenance
    ``{"channel", "path", "sha256"}``.

    ``source`` is an illumination folder (``{plate}/{plate}_{channel}.npy``, as written by
    :func:`compute_illumination`) or a mapping ``{(plate, channel): path to .npy}``. Errors name the plate,
    channel and path: a missing file, an array that is not 2-D, channels of different sizes or (with
    ``shape``) a size other than the image's."""
    planes, prov = [], []
    for c in channels:
        path = flat_field_file(source, plate, c)
        try:
            a = np.load(path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - a corrupt file: say which
            raise ValueError(f"illumination: cannot read {path} (plate {plate!r} channel {c!r}): {e}") from e
        if a.ndim != 2:
            raise ValueError(f"illumination: {path} (plate {plate!r} channel {c!r}) has shape {a.shape}; expected H x W")
        if planes and a.shape != planes[0].shape:
            raise ValueError(f"illumination: {path} (plate {plate!r} channel {c!r}) is {a.shape} but channel "
                             f"{channels[0]!r} is {planes[0].shape}")
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise ValueError(f"illumination: {path} (plate {plate!r} channel {c!r}) is {a.shape} (H, W) but the "
                             f"images are {tuple(shape)}")
        if not np.isfinite(a).all() or (a <= 0).any():
            raise ValueError(f"illumination: {path} (plate {plate!r} channel {c!r}) has values that are not finite "
                             "and > 0")
        planes.append(a.astype(np.float32, copy=False))
        prov.append({"channel": c, "path": str(path), "sha256": file_sha256(path)})
    return np.ascontiguousarray(np.stack(planes)), prov
