"""Field-level profiling as MOAProfiler: one embedding per whole field of view, no segmentation, no locations.

MOAProfiler (Doc B, papers digest section B2) feeds each whole field (5 x 1080 x 1080 for JUMP1) to an
EfficientNet-B0 and takes the last convolutional layer, global-average-pooled and flattened: one 1,280-d vector
per field; the well profile is the **median** over the well's fields (the mean is written too).

Input contract of a field model (``input_kind`` "fields" in the ONNX metadata, ``crop_size`` = the side the
network takes) is its ``intensity`` dict (written by ``phenovec.export.field_model.export_field_model``)::

    {"input_scaling": "field", "factor": f, "field_size": S, "dtype_max": m, "mean": [C] | None, "std": [C] | None}

applied in this order (MOAProfiler: each image scaled to [0, 1], then standardised to mean 0, SD 1 with
torchvision ``transforms.Normalize`` and dataset-level channel statistics):

1. decode every channel and block-mean downsample by ``f`` (``phenovec._core.field_tiles``: each f x f block ->
   its mean, float64 sum / f^2; f = 1 is full resolution); the result must be ``S/f x S/f`` = ``crop_size``;
2. to [0, 1]: divide by ``dtype_max`` (65,535 for 16-bit images), or, with ``"per_image": "minmax"`` (a model
   trained on a field store, ``phenovec.train.field_data``), per field and channel ``(x - min) / (max - min)``
   (a constant plane -> 0), as training scaled its fields;
3. with ``mean`` / ``std``: ``(x - mean_c) / std_c`` per channel (``field_channel_stats`` computes them; a
   field-trained model carries its training fields' statistics).

``"trained_on": "fields"`` records that the contract is the one the model was trained with (``phenovec train``
with ``data.fields``); a contract without it was attached at export to a model trained otherwise.

The arithmetic of steps 2-3 is float32 (as ``ToTensor`` + ``Normalize`` in MOAProfiler's code). There is no
illumination correction step: a field model whose intensity records ``crop_illumination`` (or one exported from
a checkpoint trained on corrected crops, which ``export_field_model`` refuses) is refused rather than fed
uncorrected fields.

``profile_fields`` runs this at scale as ``phenovec.profile.pipeline.profile_sites`` runs crops: tasks of
``batch_size`` consecutive fields on Dask (``phenovec.profile.scheduler``), one onnxruntime call per task,
one part file per field (``phenovec.profile.parts``, resumable, another configuration refused), per-well
mean / median rows written as each well's last field finishes (``phenovec.profile.wells``; the
``Metadata_Object_Count`` column counts the well's fields), and final outputs in index order.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.io.atomic import output_folder
from phenovec.io.embeddings import ParquetAppender, cast_features
from phenovec.profile.contract import index_by_name
from phenovec.profile.parts import PartStore
from phenovec.profile.pipeline import ProfileResult, input_fingerprint, open_run_model
from phenovec.profile.scheduler import bounded_map, open_client
from phenovec.profile.sites import ModelRef, run_model_ref, worker_session
from phenovec.profile.wells import OPERATIONS, WELL_ROW_GROUP, WellWriter

INPUT_KIND = "fields"
INPUT_SCALING = "field"
PER_IMAGE = ("minmax",)  # intensity["per_image"]: how a field-trained model's fields reach [0, 1] (step 2)


# ---------------------------------------------------------------------------------------------------------------
# the input contract


def field_intensity(field_size: int, factor: int = 1, dtype_max: float = 65535.0, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, n_channels: int | None = None, per_image: str | None = None,
                    trained_on: str | None = None) -> dict:
    """The ``intensity`` dict of a field model (module docstring), validated; errors name the argument.
    ``per_image`` / ``trained_on`` are written only when given (``"minmax"`` / ``"fields"``)."""
    try:
        field_size, factor = int(field_size), int(factor)
    except (TypeError, ValueError):
        raise ValueError(f"field_size and factor must be integers, got {field_size!r}, {factor!r}") from None
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if field_size < 1 or field_size % factor:
        raise ValueError(f"field_size {field_size} must be a positive multiple of the downsampling factor {factor}")
    dtype_max = float(dtype_max)
    if not np.isfinite(dtype_max) or dtype_max <= 0:
        raise ValueError(f"dtype_max must be a positive number, got {dtype_max}")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std (per-channel standardisation) or neither")
    if mean is not None:
        mean = [float(v) for v in mean]
        std = [float(v) for v in std]
        if len(mean) != len(std) or (n_channels is not None and len(mean) != n_channels):
            raise ValueError(f"mean ({len(mean)} values) and std ({len(std)} values) must give one value per channel"
                             + (f" ({n_channels} channels)" if n_channels is not None else ""))
        if not all(np.isfinite(mean)) or not all(np.isfinite(s) and s > 0 for s in std):
            raise ValueError(f"mean must be finite and std finite and > 0, got mean={mean}, std={std}")
    out = {"input_scaling": INPUT_SCALING, "factor": factor, "field_size": field_size, "dtype_max": dtype_max,
           "mean": mean, "std": std}
    if per_image is not None:
        if per_image not in PER_IMAGE:
            raise ValueError(f"per_image must be one of {list(PER_IMAGE)} or None, got {per_image!r}")
        out["per_image"] = per_image
    if trained_on is not None:
        if trained_on != INPUT_KIND:
            raise ValueError(f"trained_on must be {INPUT_KIND!r} or None, got {trained_on!r}")
        out["trained_on"] = trained_on
    return out


def intensity_from_metadata(meta, source: str = "model") -> dict:
    """The validated field intensity of a field model's metadata; checks ``crop_size`` = field_size / factor."""
    inten = dict(meta.intensity)
    if inten.get("input_scaling") != INPUT_SCALING:
        raise ValueError(f"{source}: a field model's intensity.input_scaling must be {INPUT_SCALING!r}, got "
                         f"{inten.get('input_scaling')!r} (intensity = {inten})")
    for key in ("factor", "field_size"):
        if key not in inten:
            raise ValueError(f"{source}: field model metadata intensity lacks key {key!r} (intensity = {inten})")
    if inten.get("crop_illumination"):
        raise ValueError(f"{source}: the field model records illumination-corrected training input (metadata "
                         "intensity.crop_illumination = true); field profiling applies no illumination correction")
    try:
        out = field_intensity(inten["field_size"], inten["factor"], inten.get("dtype_max", 65535.0),
                              inten.get("mean"), inten.get("std"), n_channels=len(meta.channels),
                              per_image=inten.get("per_image"), trained_on=inten.get("trained_on"))
    except ValueError as e:
        raise ValueError(f"{source}: metadata intensity: {e}") from None
    if out["field_size"] // out["factor"] != int(meta.crop_size):
        raise ValueError(f"{source}: field_size {out['field_size']} / factor {out['factor']} != crop_size "
                         f"{meta.crop_size}")
    return out


def scale_fields(tiles: np.ndarray, intensity: dict) -> np.ndarray:
    """Downsampled fields (C x h x w or N x C x h x w, pixel values) -> float32 model input (steps 2-3)."""
    x = np.asarray(tiles, dtype=np.float32)
    if intensity.get("per_image") == "minmax":  # per field and channel, as phenovec.train.data.scale_batch
        lo = x.min(axis=(-2, -1), keepdims=True)
        span = x.max(axis=(-2, -1), keepdims=True) - lo
        x = np.where(span > 0, (x - lo) / np.where(span > 0, span, np.float32(1)), np.float32(0))
    else:
        x = x / np.float32(intensity["dtype_max"])
    if intensity.get("mean") is not None:
        shape = (-1, 1, 1)
        x = (x - np.asarray(intensity["mean"], np.float32).reshape(shape)) / np.asarray(
            intensity["std"], np.float32).reshape(shape)
    return np.ascontiguousarray(x, dtype=np.float32)


def decode_field(paths: Sequence[str], factor: int, frames: Sequence[int] | None = None) -> np.ndarray:
    """Step 1: float32 C x H/f x W/f block means of a site's channel images (pages ``frames``, default 0); the
    steps of ``phenovec tiles`` (``phenovec.ingest.fields``)."""
    from phenovec import _core
    from phenovec.ingest.fields import block_mean, site_stack

    paths = [str(p) for p in paths]
    if frames is None or not any(frames):
        return _core.field_tiles(paths, int(factor))  # Rust decode + downsample, GIL released
    return block_mean(site_stack(paths, frames), factor, paths[0])


def read_field_input(paths: Sequence[str], intensity: dict, frames: Sequence[int] | None = None,
                     source: str | None = None) -> np.ndarray:
    """One site's float32 model input C x S/f x S/f (decode, downsample, scale); a field whose side is not
    ``field_size`` is a ValueError naming the file and both sizes. Real parity fields for export come from here."""
    f, size = int(intensity["factor"]), int(intensity["field_size"])
    try:
        tiles = decode_field(paths, f, frames)
    except Exception as e:  # decode errors name the file; add the site
        raise type(e)(f"{source or paths[0]}: {e}") from None
    side = size // f
    if tiles.shape[1:] != (side, side):
        h, w = tiles.shape[1] * f, tiles.shape[2] * f
        raise ValueError(f"{source or 'field'} ({paths[0]}): field of {h} x {w} pixels ({tiles.shape[1]} x "
                         f"{tiles.shape[2]} after downsampling by {f}) but the model takes {size} x {size} fields "
                         f"({side} x {side} after downsampling)")
    return scale_fields(tiles, intensity)


# ---------------------------------------------------------------------------------------------------------------
# dataset-level channel statistics


def field_channel_stats(index, channels: Sequence[str], factor: int = 1, dtype_max: float = 65535.0,
                        max_sites: int | None = None, progress: bool = False) -> tuple[list[float], list[float]]:
    """Per-channel mean and population SD (ddof 0) of the fields scaled as a field model sees them before
    standardisation (decode, block-mean downsample by ``factor``, divide by ``dtype_max``), over every pixel of
    the index's sites (or its first ``max_sites``): the dataset-level statistics MOAProfiler's
    ``transforms.Normalize`` uses. Streamed one site at a time with float64 per-site moments merged by Chan et
    al.'s parallel rule (never all fields in memory). ``index``: an image index path / DataFrame / ImageIndex,
    channels matched by name."""
    from tqdm.auto import tqdm

    channels = [str(c) for c in channels]
    idx, paths, frames = index_by_name(index, channels, "requested")
    sites = idx.sites
    factor, dtype_max = int(factor), float(dtype_max)
    if factor < 1 or dtype_max <= 0:
        raise ValueError(f"factor must be >= 1 and dtype_max > 0, got {factor}, {dtype_max}")
    n_sites = len(sites) if max_sites is None else min(len(sites), int(max_sites))
    if n_sites < 1:
        raise ValueError("field_channel_stats: the index has no sites (or max_sites < 1)")
    moments = ChannelMoments(len(channels))
    for s in tqdm(range(n_sites), desc="field stats", unit="field", disable=not progress):
        try:
            x = decode_field(paths[s], factor, frames[s]).astype(np.float64) / dtype_max
        except Exception as e:
            raise type(e)(f"site {s} ({paths[s][0]}): {e}") from None
        moments.add(x.reshape(len(channels), -1))
    return moments.result()


class ChannelMoments:
    """Per-channel mean and population SD streamed over blocks of pixels: float64 per-block moments merged by
    Chan et al.'s parallel rule (never all pixels in memory)."""

    def __init__(self, channels: int):
        self.n, self.mean, self.m2 = 0, np.zeros(channels), np.zeros(channels)

    def add(self, x: np.ndarray) -> None:
        """``x``: C x pixels (float64)."""
        k = x.shape[1]
        mk = x.mean(axis=1)
        m2k = ((x - mk[:, None]) ** 2).sum(axis=1)
        delta = mk - self.mean
        tot = self.n + k
        self.mean = self.mean + delta * (k / tot)
        self.m2 = self.m2 + m2k + delta ** 2 * (self.n * k / tot)
        self.n = tot

    def result(self) -> tuple[list[float], list[float]]:
        return [float(v) for v in self.mean], [float(v) for v in np.sqrt(self.m2 / self.n)]


# ---------------------------------------------------------------------------------------------------------------
# the worker side


@dataclass(frozen=True)
class FieldJob:
    """One field to embed: its site id (index row), channel paths in model order, pages (or None)."""

    site: int
    paths: tuple
    frames: tuple | None = None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (max subtracted): the class probabilities of a classifier's logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def class_outputs(meta) -> tuple[str, ...]:
    """The outputs a field run reads: ``features``, and ``logits`` when the model has them and names its classes
    (a field classifier exported with ``--logits``: its per-field class probabilities are written)."""
    return ("features", "logits") if "logits" in meta.outputs and meta.classes else ("features",)


def probability_names(meta) -> list[str]:
    """``prob_<class>`` columns of a field run (empty without logits)."""
    return [f"prob_{c}" for c in meta.classes] if len(class_outputs(meta)) > 1 else []


def embed_field_group(ref: ModelRef, intensity: dict, jobs: list, batch_size: int, dtype: str,
                      classes: int = 0) -> list[tuple[int, np.ndarray]]:
    """Embed consecutive fields: ``[(site, 1 x D features in dtype), ...]`` in ``jobs`` order; with ``classes``
    > 0 the model's logits are read too and each row is the features followed by the softmax class
    probabilities (1 x (D + classes))."""
    sess = worker_session(ref)
    x = np.stack([read_field_input(j.paths, intensity, j.frames, source=f"site {j.site}") for j in jobs])
    if classes:
        raw = sess.run_batches(x, batch_size, outputs=("features", "logits"))
        if raw.shape[1] != sess.feature_dim + classes:
            raise RuntimeError(f"{sess.path}: logits of width {raw.shape[1] - sess.feature_dim} for {classes} classes")
        raw = np.concatenate([raw[:, :sess.feature_dim], softmax(raw[:, sess.feature_dim:])], axis=1)
    else:
        raw = sess.run_batches(x, batch_size)
    feats = cast_features(raw, dtype)
    return [(j.site, feats[i:i + 1]) for i, j in enumerate(jobs)]


# ---------------------------------------------------------------------------------------------------------------
# the run


def profile_fields(model_onnx, index, out, *, batch_size: int = 8, scheduler: str | None = None,
                   workers: int | None = None, dtype: str = "float32", providers="auto",
                   precision: str = "fp32", trt_cache_dir=None, sessions: str = "auto",
                   max_in_flight: int | None = None,
                   micro_batch: int | str | None = "auto", progress: bool = True) -> ProfileResult:
    """One embedding per field of every site of ``index`` (an image index path / DataFrame / ``ImageIndex``;
    channels matched by name to the model's) with a field model ``model_onnx`` (metadata ``input_kind``
    "fields", made by ``export_field_model``), into ``out``:

    - ``embeddings.zarr``: a ``phenovec.io.embeddings`` store, one row per field in index order, ``meta.parquet``
      = the site's ``Metadata_*`` columns; attributes: channels, field_size, factor, crop_size, intensity, model
      weights hash and arch, phenovec version, mode "fields";
    - ``wells_mean.parquet``, ``wells_median.parquet``: per-well mean and median over the well's fields (the
      median is MOAProfiler's aggregation), sorted by plate and well;
    - with a classifier exported with logits (``phenovec export --fields --logits``; metadata ``classes``):
      ``field_probabilities.parquet``, one row per field in index order, the site's ``Metadata_*`` columns and
      ``prob_<class>`` = the softmax of the logits (``phenovec.evaluate.field_classification`` scores it).

    ``batch_size``: fields per task and per inference call; ``micro_batch``: fields per onnxruntime call within it
    (``phenovec.runtime.ProfileSession``; changes no number); ``providers`` / ``precision`` / ``trt_cache_dir``: as
    ``phenovec.profile.profile_sites``; ``sessions`` too; ``scheduler`` / ``workers`` / ``max_in_flight``:
    see ``phenovec.profile.scheduler``; ``dtype``: embeddings dtype. Resumable (``phenovec.profile.parts``): a
    rerun into the same ``out`` skips finished fields and gives identical outputs; another model or
    configuration is refused. ``result.cells`` / ``result.embedded`` count fields.
    """
    from tqdm.auto import tqdm

    import phenovec

    t0 = time.perf_counter()
    model_path, meta, batch_size = open_run_model(model_onnx, INPUT_KIND, dtype, batch_size, micro_batch,
                                                  precision, sessions, scheduler, providers)
    intensity = intensity_from_metadata(meta, source=str(model_path))
    channels = list(meta.channels)
    idx, paths, frames = index_by_name(index, channels)
    sites, source = idx.sites.reset_index(drop=True), idx.source
    n_sites = len(sites)
    out = Path(out)
    names = meta.feature_names()
    probs = probability_names(meta)
    n_feat = len(names)
    extra = {"paths": [list(p) for p in paths], "frames": [None if f is None else list(f) for f in frames]}
    config = {"mode": INPUT_KIND, "source": str(source), "input_sha256": input_fingerprint(sites, extra),
              "sites": n_sites, "model_weights_sha256": meta.weights_sha256, "channels": channels,
              "crop_size": int(meta.crop_size), "intensity": intensity, "feature_dim": meta.feature_dim,
              "dtype": dtype, "batch_size": batch_size, "precision": precision}
    if probs:  # only then, so that runs of models without logits keep their configuration (resume)
        config["probabilities"] = probs
    with output_folder(out) as run:  # locked; a run that fails before its first field leaves nothing
        store = PartStore(out, config)

        def features(s):  # a part holds the features, then the class probabilities
            return store.read(s)[1][:, :n_feat]

        wells = WellWriter(out, sites, names, features)

        done = store.done_sites() & set(range(n_sites))
        run.resumable = bool(done)
        resumed = len(done)
        wells.resume(done)
        groups = [list(range(i, min(i + batch_size, n_sites))) for i in range(0, n_sites, batch_size)]
        groups = [g for g in groups if any(s not in done for s in g)]
        if groups:
            with tqdm(total=n_sites, initial=len(done), unit="field", desc="profile fields", disable=not progress,
                      smoothing=0.1) as bar, open_client(scheduler, workers) as (client, slots, thr, per_thread):
                ref = run_model_ref(str(model_path), meta.weights_sha256, providers, thr, per_thread, micro_batch,
                                    precision, trt_cache_dir, sessions)
                window = int(max_in_flight) if max_in_flight is not None else 2 * slots + 1
                fn = functools.partial(embed_field_group, ref, intensity, classes=len(probs))
                tasks = ([FieldJob(s, paths[s], frames[s]) for s in g] for g in groups)
                for results in bounded_map(client, fn, tasks, window, batch_size=batch_size, dtype=dtype):
                    for s, feats in results:
                        if s in done:
                            continue
                        store.write(s, np.zeros(1, np.int8), feats)  # code 0 = "inside": the field is embedded
                        done.add(s)
                        run.resumable = True
                        wells.site_committed(s)
                        bar.update(1)
        missing = sorted(set(range(n_sites)) - done)
        if missing:
            raise RuntimeError(f"{out}: sites {missing[:10]} were not profiled")

        attrs = {"channels": channels, "field_size": intensity["field_size"], "factor": intensity["factor"],
                 "crop_size": int(meta.crop_size), "intensity": intensity, "model_weights_sha256": meta.weights_sha256,
                 "model_arch": meta.arch, "phenovec_version": phenovec.__version__, "source": str(source),
                 "mode": INPUT_KIND}
        _write_embeddings(out / "embeddings.zarr", n_sites, features, sites, names, dtype, attrs)
        if probs:
            from phenovec.io.profiles import write_table

            p = np.concatenate([store.read(s)[1][:, n_feat:] for s in range(n_sites)]) if n_sites else \
                np.empty((0, len(probs)), np.dtype(dtype))
            write_table(sites.assign(**{c: p[:, i] for i, c in enumerate(probs)}),
                                 out / "field_probabilities.parquet")
        for op in OPERATIONS:  # streamed, one well at a time, as profile_sites' assembly
            table = ParquetAppender(out / f"wells_{op}.parquet", WELL_ROW_GROUP)
            try:
                for rows in wells.rows(op):
                    table.append(rows)
                table.close()
            except BaseException:
                table.abort()
                raise
        seconds = time.perf_counter() - t0
        store.mark_complete({"sites": n_sites, "fields": n_sites})
    paths_out = {k: out / v for k, v in (("embeddings", "embeddings.zarr"), ("wells_mean", "wells_mean.parquet"),
                                         ("wells_median", "wells_median.parquet"))}
    if probs:
        paths_out["field_probabilities"] = out / "field_probabilities.parquet"
    return ProfileResult(out, n_sites, n_sites, n_sites, resumed, seconds, paths_out)


def _write_embeddings(path: Path, n_sites: int, read_part, sites: pd.DataFrame, names, dtype: str, attrs: dict,
                      chunk_rows: int = 4096) -> None:
    """The embeddings store from the per-site parts appended in site order."""
    from phenovec.io.embeddings import EmbeddingWriter

    with EmbeddingWriter(path, names, dtype=np.dtype(dtype), chunk_rows=chunk_rows, overwrite=True,
                        expected_rows=n_sites) as writer:
        for s in range(n_sites):
            feats = read_part(s)
            if feats.shape != (1, len(names)):
                raise ValueError(f"part of site {s}: features of shape {feats.shape}, expected (1, {len(names)})")
            writer.append(sites.iloc[s:s + 1], feats)
        if n_sites == 0:  # an empty store that still has the site table's columns
            writer.append(sites.iloc[:0], np.empty((0, len(names)), np.dtype(dtype)))
        writer.group.attrs.update(attrs)
