"""The worker side of profiling: a group of sites -> per site (edge codes, embeddings).

A site's images named by object-store URL (an index read with ``fetch=False``) are copied into the image cache
by the worker that cuts the site, when it cuts it (:meth:`SiteJob.local_images`): a run over a remote plate
starts at once, and the cache fills as the sites are processed.

A task is one site or a few consecutive sites (grouped so a task holds about ``batch_size`` cells). In the
worker: Rust decode + crop (``phenovec._core.crop_site``, GIL released) with the options of the model's
:class:`~phenovec.profile.contract.InputContract` and of the site (pages, its plate's flat field, its label
image), scaling to float32, then onnxruntime inference on the concatenated crops of the task in batches of
``batch_size`` (a fixed composition for a given task, so a rerun of the task gives the same numbers). Features
are cast to the output dtype in the worker (less to ship back).

Flat fields (a model trained on illumination-corrected crops, :func:`worker_flat_field`) are not shipped with
the tasks: a task names its sites' plates, and each worker process loads a plate's flat fields from the run's
source on first use, checks them against the sha256 the run recorded when it started (a file replaced under a
running cluster is an error, not a mix) and keeps the last ``FLAT_PLATES`` plates (tasks are consecutive sites,
so a process works on the plate ending and the one starting: each plate is loaded once per process when the
index is sorted by plate).

Sessions (:func:`worker_session`), cached in this module and checked against the model's ``weights_sha256`` (a
model file replaced under a running cluster is an error, not a mix):

- ``ModelRef.per_thread`` (the threaded scheduler on the CPU provider): one session per Dask thread, each with
  ``intra_op_threads`` onnxruntime threads (cores / Dask threads). Each thread decodes, then infers on its own
  cores; no thread waits for another's inference and no onnxruntime pool is stalled by a decode running on one of
  its cores (2 cores, EfficientNet-B0: steady rate 318 cells/s against 257 with one shared 2-thread session on
  an AMD EPYC, 307 against 234 on an Intel Xeon with CPU micro-batches; ``bench/RESULTS.md``);
- otherwise one ``exclusive`` session per worker process, shared by its threads (GPU providers: one engine and
  one copy of the weights on the device; runs take turns).

``sessions`` chooses explicitly (:data:`SESSION_LAYOUTS`): ``"auto"`` the rules above, ``"shared"`` one exclusive
session per process with all of the process's cores (ResNet-50 in bf16 on 2 cores: 413 cells/s against 384 with a
session per thread; EfficientNet-B0: 653 against 717, ``bench/RESULTS.md`` session 20), ``"per_thread"`` a session
per Dask thread (the threaded scheduler on host-CPU providers only). Neither changes a float32 number (each crop's
features do not depend on its batch or the session's threads).

A worker whose session cannot run the run's ``precision`` (``phenovec.runtime.ProfileSession`` falls back to
float32 with a warning, e.g. bf16 on a CPU without AMX / AVX512-BF16, fp16 without TensorRT) is an error here:
one run's embeddings are never a mix of precisions.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from phenovec.io.embeddings import cast_features
from phenovec.profile.contract import InputContract

SESSION_LAYOUTS = ("auto", "per_thread", "shared")
_SESSIONS: dict = {}
_LOCK = threading.Lock()
_THREAD = threading.local()  # per-thread sessions: freed with their thread
FLAT_PLATES = 2  # plates whose flat fields a worker process keeps (module docstring)
_FLATS: OrderedDict = OrderedDict()
_FLAT_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to open the model: a path it can read, the expected weights hash, its options."""

    path: str
    weights_sha256: str
    providers: object = "auto"
    intra_op_threads: int | None = None
    per_thread: bool = False
    micro_batch: int | str | None = "auto"
    precision: str = "fp32"
    trt_cache_dir: str | None = None


def check_sessions(sessions: str, scheduler: str | None) -> str:
    """``sessions`` if it is one of :data:`SESSION_LAYOUTS` and ``scheduler`` allows it (``"per_thread"``: the
    threaded scheduler only), else ``ValueError`` (checked before a run writes anything)."""
    if sessions not in SESSION_LAYOUTS:
        raise ValueError(f"sessions must be one of {list(SESSION_LAYOUTS)}, got {sessions!r}")
    if sessions == "per_thread" and (scheduler or "threads") != "threads":
        raise ValueError(f"sessions='per_thread' needs the threads scheduler (scheduler {scheduler!r} runs each "
                         "worker in its own process: one session per process)")
    return sessions


def run_model_ref(path: str, weights_sha256: str, providers, threads: int | None, thread_sessions: bool,
                  micro_batch: int | str | None = "auto", precision: str = "fp32",
                  trt_cache_dir: str | None = None, sessions: str = "auto") -> ModelRef:
    """The ``ModelRef`` of a run whose scheduler gave ``threads`` onnxruntime threads per session and allows a
    session per Dask thread (``thread_sessions``, ``phenovec.profile.scheduler.open_client``): per-thread
    sessions only when ``providers`` resolve to host-CPU providers alone in this process (CPU, or OpenVINO + CPU;
    the threaded scheduler's workers are this process); a GPU provider keeps one shared session with
    onnxruntime's default threads. ``sessions`` (module docstring) overrides the choice: ``"shared"`` one
    session per process (in the threaded scheduler with the process's cores), ``"per_thread"`` a session per
    thread (refused unless ``thread_sessions`` and host-CPU providers). ``micro_batch``, ``precision``,
    ``trt_cache_dir``: :class:`~phenovec.runtime.ProfileSession`'s."""
    from phenovec.runtime import providers as prov

    cache = None if trt_cache_dir is None else str(trt_cache_dir)
    common = dict(micro_batch=micro_batch, precision=precision, trt_cache_dir=cache)
    if sessions == "shared":
        return ModelRef(path, weights_sha256, providers, None if thread_sessions else threads, False, **common)
    if thread_sessions:
        chosen = prov.choose_providers(providers, precision)
        if all(p in prov.HOST for p in chosen):
            return ModelRef(path, weights_sha256, providers, threads, True, **common)
        if sessions == "per_thread":
            raise ValueError(f"sessions='per_thread' is for host-CPU providers; {chosen} share one session")
        return ModelRef(path, weights_sha256, providers, None, False, **common)
    if sessions == "per_thread":
        raise ValueError("sessions='per_thread' needs the threads scheduler")
    return ModelRef(path, weights_sha256, providers, threads, False, **common)


def _open(ref: ModelRef):
    import socket

    from phenovec.runtime import ProfileSession

    sess = ProfileSession(ref.path, providers=ref.providers, intra_op_threads=ref.intra_op_threads,
                          exclusive=not ref.per_thread, micro_batch=ref.micro_batch, precision=ref.precision,
                          trt_cache_dir=ref.trt_cache_dir)
    if sess.precision != ref.precision:
        raise RuntimeError(f"precision {ref.precision!r} cannot run on worker {socket.gethostname()}: "
                           f"{sess.precision_fallback}")
    if sess.metadata.weights_sha256 != ref.weights_sha256:
        raise ValueError(f"{ref.path}: weights_sha256 {sess.metadata.weights_sha256} on this worker differs "
                         f"from the run's {ref.weights_sha256} (the model file changed)")
    return sess


def worker_session(ref: ModelRef):
    """The cached :class:`ProfileSession` of ``ref`` in this process, or in this thread with ``ref.per_thread``
    (opened on first use; see the module docstring)."""
    key = (ref.path, ref.weights_sha256, str(ref.providers), ref.intra_op_threads, ref.micro_batch, ref.precision,
           ref.trt_cache_dir)
    if ref.per_thread:
        cache = _THREAD.__dict__.setdefault("sessions", {})
        if key not in cache:
            cache[key] = _open(ref)
        return cache[key]
    with _LOCK:
        if key not in _SESSIONS:
            _SESSIONS[key] = _open(ref)
        return _SESSIONS[key]


@dataclass(frozen=True)
class FlatFieldRef:
    """What a worker needs to load a run's flat fields: the illumination ``source`` (a ``phenovec illum`` folder
    or a ``{(plate, channel): path}`` mapping, ``phenovec.ingest.illumination.load_illumination``), the model's
    ``channels`` and, per plate, the sha256 of each channel's file (channels order) when the run started."""

    source: object
    channels: tuple
    sha256: dict  # plate -> tuple of sha256


def worker_flat_field(ref: FlatFieldRef, plate: str) -> np.ndarray:
    """The float32 C x H x W flat fields of ``plate`` in this process: loaded from ``ref.source`` on first use and
    checked against the run's sha256 (module docstring). The cache is keyed by the files' hashes, so another
    run's (or changed) flat fields are never taken for these."""
    from phenovec.ingest.illumination import load_illumination

    want = tuple(ref.sha256[plate])
    key = (tuple(ref.channels), want)
    with _FLAT_LOCK:
        if key in _FLATS:
            _FLATS.move_to_end(key)
            return _FLATS[key]
        flat, prov = load_illumination(ref.source, plate, list(ref.channels))
        for p, sha in zip(prov, want):
            if p["sha256"] != sha:
                raise ValueError(f"{p['path']}: the flat field of plate {plate!r} channel {p['channel']!r} has "
                                 f"sha256 {p['sha256']} on this worker but {sha} when the run started (the file "
                                 "changed)")
        _FLATS[key] = flat
        while len(_FLATS) > FLAT_PLATES:
            _FLATS.popitem(last=False)
        return flat


@dataclass(frozen=True)
class SiteJob:
    """One site to embed from images: its id (index row), channel paths in model order, centres, pages, and for
    the crop steps of the model its plate (illumination), label image and cells' label ids (a masked model;
    ``label_ids`` None: DeepProfiler's median rule). A path (or label image) may be an object-store URL: it is
    copied into ``cache`` (``phenovec.ingest.image_source``; None: its default cache) by the worker that cuts
    the site, when it cuts it."""

    site: int
    paths: tuple
    xs: np.ndarray
    ys: np.ndarray
    frames: tuple | None = None
    plate: str | None = None
    labels: str | None = None
    label_ids: np.ndarray | None = None
    cache: str | None = None

    def local_images(self) -> tuple[list[str], str | None]:
        """(channel paths, label image) as local files: remote URLs copied into :attr:`cache` now (errors name
        the URL and the site)."""
        from phenovec.ingest.image_source import local_paths

        paths = local_paths(self.paths, self.cache, where=lambda i: f"site {self.site} image {i + 1} of "
                                                                    f"{len(self.paths)}")
        labels = self.labels
        if labels is not None:
            labels = local_paths([labels], self.cache, where=lambda i: f"site {self.site} label image")[0]
        return paths, labels


def cut_site(job: SiteJob, contract: InputContract, edge: str, out: np.ndarray | None = None,
             flats: FlatFieldRef | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(codes int8 per cell, float32 model input of the kept cells) of one site. ``out`` (contracts that cut
    float32 crops, :attr:`InputContract.cuts_float32`): a flat float32 buffer of at least cells x C x box x box
    values that the crops are cut into (``_core.crop_site(out=)``); the model input is then a view of its first
    rows. ``flats``: the run's flat fields (a model trained on illumination-corrected crops)."""
    from phenovec import _core

    paths, labels = job.local_images()  # an object-store image is fetched here, on the worker cutting the site
    rescale, opts = contract.crop_site_args()
    if job.frames is not None:
        opts["frames"] = list(job.frames)
    if flats is not None:
        opts["flat"] = worker_flat_field(flats, job.plate)
    if contract.crop_mask is not None:
        opts["labels"] = labels
        if job.label_ids is not None:
            opts["label_ids"] = job.label_ids
    if out is not None:
        opts["out"] = out
    try:
        crops, codes = _core.crop_site(paths, np.ascontiguousarray(job.xs, dtype=np.float64),
                                       np.ascontiguousarray(job.ys, dtype=np.float64), contract.box_size, edge,
                                       rescale, compact=True, **opts)
    except Exception as e:  # decode errors name the file; add the site
        raise type(e)(f"site {job.site} ({job.paths[0]}): {e}") from None
    return np.asarray(codes, dtype=np.int8), contract.model_input_from_cut(np.asarray(crops))


def crop_buffer(values: int) -> np.ndarray:
    """This thread's flat float32 crop buffer, at least ``values`` long (grown to a quarter more when too small,
    never shrunk; freed with the thread, i.e. when the run's cluster closes). Cutting every group of a run into
    one buffer spares the kernel zeroing a fresh buffer of tens of MB per site (6.5 % of a 2-core profiling
    run's CPU in perf, more than decode's inflate)."""
    buf = getattr(_THREAD, "crops", None)
    if buf is None or buf.size < values:
        _THREAD.crops = None  # the old buffer goes before the new one is allocated
        buf = _THREAD.crops = np.empty(values + values // 4, np.float32)
    return buf


def cut_group(jobs: list, contract: InputContract, edge: str,
              flats: FlatFieldRef | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(codes per site, model input blocks) of a group of sites. Float32 contracts cut the sites one after
    another into this thread's :func:`crop_buffer`, so the group's crops are one block (views of it: no copy for
    a batch that spans two sites); the buffer is reused by the thread's next group, so the blocks are valid only
    until then. Other contracts give one fresh block per site."""
    if not contract.cuts_float32:
        cut = [cut_site(j, contract, edge, flats=flats) for j in jobs]
        return [c for c, _ in cut], [x for _, x in cut]
    per_cell = len(contract.channels) * contract.box_size ** 2
    buf = crop_buffer(sum(len(j.xs) for j in jobs) * per_cell)
    codes, at = [], 0
    for j in jobs:
        c, crops = cut_site(j, contract, edge, out=buf[at:], flats=flats)
        if crops.size and not np.may_share_memory(crops, buf):  # model_input_from_cut must keep float32 cuts as they are
            raise RuntimeError(f"the model input of site {j.site} is not the crops cut into the buffer")
        codes.append(c)
        at += crops.size
    return codes, [buf[:at].reshape(-1, len(contract.channels), contract.box_size, contract.box_size)]


def profile_outputs(meta) -> tuple[str, ...]:
    """The model outputs a profiling run writes: ``features``, and ``probabilities`` when the model has them
    (a ``train.task: assays`` export; columns ``prob_<task>`` after the features, ``phenovec.profile.assemble``)."""
    return ("features", "probabilities") if "probabilities" in meta.outputs else ("features",)


def embed_site_group(ref: ModelRef, contract: InputContract, jobs: list, edge: str, batch_size: int,
                     dtype: str, flats: FlatFieldRef | None = None) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Embed a group of sites from images: ``[(site, codes, features in dtype), ...]`` in ``jobs`` order (the
    crops of :func:`cut_group`, not referred to once the features are computed); a model with probabilities
    gives features and probabilities side by side (:func:`profile_outputs`)."""
    sess = worker_session(ref)
    codes, blocks = cut_group(jobs, contract, edge, flats)
    feats = cast_features(sess.run_batches(blocks, batch_size, outputs=profile_outputs(sess.metadata)), dtype)
    out, at = [], 0
    for job, c in zip(jobs, codes):
        kept = int(np.count_nonzero(c <= 2))  # codes 0-2 have a crop row (compact), in cell order
        out.append((job.site, c, feats[at:at + kept]))
        at += kept
    if at != len(feats):
        raise RuntimeError(f"{len(feats)} embeddings for {at} kept cells of sites {[j.site for j in jobs]}")
    return out


@dataclass(frozen=True)
class CropJob:
    """One site to embed from a crop store: its id, its cells' edge codes and array rows (-1: no crop)."""

    site: int
    codes: np.ndarray
    rows: np.ndarray


def embed_crop_group(ref: ModelRef, contract: InputContract, store: str, channel_idx: list, jobs: list,
                     batch_size: int, dtype: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Embed a group of sites from a crop store (``crops.zarr``): rows read, channels picked by name, scaled (the
    outputs of :func:`profile_outputs`, side by side)."""
    import zarr

    sess = worker_session(ref)
    arr = zarr.open_array(store, mode="r")
    blocks = []
    for j in jobs:
        rows = j.rows[j.rows >= 0]
        if len(rows) == 0:
            blocks.append(np.empty((0, len(channel_idx), contract.box_size, contract.box_size), np.float32))
            continue
        lo, hi = int(rows.min()), int(rows.max()) + 1
        raw = np.asarray(arr[lo:hi])[rows - lo][:, channel_idx]
        blocks.append(contract.model_input_from_stored(raw))
    feats = cast_features(sess.run_batches(blocks, batch_size, outputs=profile_outputs(sess.metadata)), dtype)
    out, at = [], 0
    for j, b in zip(jobs, blocks):
        out.append((j.site, j.codes, feats[at:at + len(b)]))
        at += len(b)
    return out
