"""``ProfileSession``: an onnxruntime session over a phenovec ONNX model that checks its input contract.

The model's metadata (``phenovec.io.model_metadata``: channels, crop size, intensity scaling, feature dim) is read
back from the file; ``run`` refuses crops whose channel count, crop size or dtype differ from it, and
``check_input`` refuses a caller whose channel names / order, crop size or intensity scaling differ, so
profiling can never silently feed a model the wrong channels.

Providers (``phenovec.runtime.providers``): TensorRT -> CUDA -> CPU by availability (OpenVINO on the CPU for
bf16). On CUDA / TensorRT the session uses IO binding (input bound from host memory, outputs allocated on the
device and copied back once per batch); ``io_binding=True`` runs the same binding path on the CPU providers
(outputs bound to host memory), which is how the tests exercise it.

``precision`` (the exported model stays float32; the runtime lowers it):

- ``"fp32"`` (default);
- ``"fp16"``: TensorRT only (``trt_fp16_enable``);
- ``"bf16"``: OpenVINO's CPU plugin on CPUs with AMX / AVX512-BF16 (``providers.openvino_options``): ResNet-50 ~5x
  and EfficientNet-B0 ~1.5x the float32 CPU rate on 2 Xeon cores, features within ~1e-2 relative of float32.

A precision the chosen providers cannot run falls back to float32 with a ``RuntimeWarning``; ``session.precision``
says what runs and ``session.precision_fallback`` why it fell back. In float32 each crop's features do not depend
on the other crops of its call (tested bit for bit on the CPU and OpenVINO providers); in bf16 a repeated call
gives the same bits and another call size the same to float32 rounding (~1e-7 relative, far inside bf16's error).

Micro-batches (``micro_batch``): on the host-CPU providers (CPU, OpenVINO) one ``run`` call of many crops is split
into onnxruntime calls of at most ``micro_batch`` crops (default ``"auto"``: :func:`auto_micro_batch`, about
``CPU_CALL_ELEMENTS`` input values per call; 16 crops of 5 x 128 x 128). A large CPU batch is slower per crop than
a small one once its intermediate tensors outgrow the caches (EfficientNet-B0, 5 x 128 x 128, 2 cores: 282
crops/s at 256 per call, 372 at 16, medians of 5, ``bench/RESULTS.md``). The split changes no number, only the
speed. GPU providers are not split (a GPU wants the whole batch).

Tested paths: the CPU provider, OpenVINO on the CPU (fp32 and bf16) and the IO-binding code on the CPU providers.
TensorRT / CUDA choice is tested with a stubbed ``get_available_providers``; no GPU provider has run.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from phenovec.runtime import providers as _prov
from phenovec.io.model_metadata import ModelMetadata, check_matches

INPUT_NAME = "crops"

#: Input values (crops x channels x height x width) per onnxruntime call on the CPU provider with
#: ``micro_batch="auto"``: 16 crops of 5 x 128 x 128 (5 MiB of float32; module docstring).
CPU_CALL_ELEMENTS = 16 * 5 * 128 * 128


def check_micro_batch(micro_batch):
    """``micro_batch`` if it is ``"auto"``, ``None`` or an integer >= 1 (as ``int``), else ``ValueError``."""
    if micro_batch == "auto" or micro_batch is None:
        return micro_batch
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, (int, np.integer)) or micro_batch < 1:
        raise ValueError(f"micro_batch must be 'auto', None or an integer >= 1, got {micro_batch!r}")
    return int(micro_batch)


def auto_micro_batch(first_provider: str, sample_shape: Sequence[int]) -> int | None:
    """Crops per onnxruntime call for ``micro_batch="auto"``: ``CPU_CALL_ELEMENTS`` // values per crop (at least
    1) on the host-CPU providers (CPU, OpenVINO); ``None`` (no split) on a GPU provider."""
    if first_provider not in _prov.HOST:
        return None
    return max(1, CPU_CALL_ELEMENTS // max(1, int(np.prod([int(d) for d in sample_shape]))))


def _session_options(intra_op_threads: int | None, optimise: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if intra_op_threads is not None:
        if int(intra_op_threads) < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        so.intra_op_num_threads = int(intra_op_threads)
    if not optimise:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


def read_metadata(onnx_path: str | os.PathLike) -> ModelMetadata:
    """The phenovec metadata of an ONNX file (via a CPU onnxruntime session; no ``onnx`` package needed)."""
    import onnxruntime as ort

    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    sess = ort.InferenceSession(str(path), _session_options(1, optimise=False), providers=[_prov.CPU])
    return ModelMetadata.from_props(sess.get_modelmeta().custom_metadata_map, source=str(path))


class ProfileSession:
    """Run a phenovec ONNX model on float32 crops (N x C x H x W) to features (N x D).

    ``providers``: ``"auto"`` (TensorRT -> CUDA -> CPU by availability; OpenVINO on the CPU for bf16) or an explicit
    list of onnxruntime provider names. ``precision``: ``"fp32"``, ``"fp16"`` (TensorRT) or ``"bf16"`` (OpenVINO on
    the CPU); see the module docstring. ``trt_cache_dir``: TensorRT engine + timing cache folder. ``max_batch`` /
    ``opt_batch``: the TensorRT optimisation profile (batch 1..max_batch). ``intra_op_threads``: onnxruntime's CPU
    thread pool (and OpenVINO's thread count). ``io_binding``: ``None`` (default: on GPU providers), ``True`` or
    ``False``.

    ``micro_batch``: ``"auto"`` (default; :func:`auto_micro_batch`), a number of crops per onnxruntime call, or
    ``None`` (one onnxruntime call per ``run``); see the module docstring.

    ``exclusive`` (default): calls from several threads run one at a time (a lock around each onnxruntime
    ``run``), each with the whole intra-op pool. Concurrent runs of one CPU session contend for the same cores
    (2 cores, 2 Dask threads sharing one session, 48 EfficientNet-B0 sites: 262 cells/s serialised against 224
    with concurrent runs, medians of 3, ``bench/RESULTS.md``); while one thread infers, the others are free to
    decode and crop. ``False`` lets onnxruntime run calls concurrently (a session used by one thread only).
    """

    def __init__(self, onnx_path: str | os.PathLike, providers: str | Sequence[str] = "auto",
                 precision: str = "fp32", trt_cache_dir: str | os.PathLike | None = None,
                 intra_op_threads: int | None = None, max_batch: int = 1024, opt_batch: int = 256,
                 exclusive: bool = True, micro_batch: int | str | None = "auto", io_binding: bool | None = None):
        import threading

        import onnxruntime as ort

        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        precision = _prov.check_precision(precision)
        micro_batch = check_micro_batch(micro_batch)
        self.precision_fallback: str | None = None  # why the asked precision fell back to float32, if it did
        chosen = _prov.choose_providers(providers, precision)
        device = _prov.openvino_device() if _prov.OPENVINO in chosen else None
        self.precision = self._runnable(precision, chosen)
        so = _session_options(intra_op_threads)
        if device is not None:  # a plugin EP: added for its device; onnxruntime appends the CPU provider itself
            so.add_provider_for_devices([device], _prov.openvino_options(precision=self.precision,
                                                                        threads=intra_op_threads))
            self.session = ort.InferenceSession(str(self.path), so)
        else:
            options: list[dict] = []
            for p in chosen:
                if p == _prov.TENSORRT:
                    meta = read_metadata(self.path)
                    options.append(_prov.tensorrt_options(
                        fp16=self.precision == "fp16", cache_dir=trt_cache_dir, input_name=INPUT_NAME,
                        sample_shape=(len(meta.channels), meta.crop_size, meta.crop_size),
                        max_batch=max_batch, opt_batch=min(opt_batch, max_batch)))
                else:
                    options.append({})
            self.session = ort.InferenceSession(str(self.path), so, providers=chosen, provider_options=options)
        self.requested_providers = chosen
        self.providers = list(self.session.get_providers())  # what onnxruntime actually enabled
        needs = {"fp16": _prov.TENSORRT, "bf16": _prov.OPENVINO}.get(self.precision)
        if needs is not None and needs not in self.providers:
            self.precision_fallback = f"{needs} did not start (active: {self.providers})"
            warnings.warn(f"{self.path}: {self.precision_fallback}; running float32", RuntimeWarning, stacklevel=2)
            self.precision = "fp32"
        self.metadata = ModelMetadata.from_props(self.session.get_modelmeta().custom_metadata_map,
                                                 source=str(self.path))
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise ValueError(f"{self.path}: expected one input {INPUT_NAME!r}, got {[i.name for i in inputs]}")
        shape = list(inputs[0].shape)
        want = [len(self.metadata.channels), self.metadata.crop_size, self.metadata.crop_size]
        if len(shape) != 4 or shape[1:] != want:
            raise ValueError(f"{self.path}: graph input shape {shape} disagrees with its metadata "
                             f"(channels {list(self.metadata.channels)}, crop_size {self.metadata.crop_size})")
        self.output_names = [o.name for o in self.session.get_outputs()]
        if "features" not in self.output_names:
            raise ValueError(f"{self.path}: no 'features' output (outputs {self.output_names})")
        on_gpu = self.providers[0] in _prov.GPU
        self.io_binding = on_gpu if io_binding is None else bool(io_binding)
        self._output_device = "cuda" if on_gpu else "cpu"
        self.micro_batch = auto_micro_batch(self.providers[0], want) if micro_batch == "auto" else micro_batch
        self._lock = threading.Lock() if exclusive else None

    def _runnable(self, precision: str, chosen: list[str]) -> str:
        """``precision`` if the chosen providers can run it, else ``"fp32"`` with a ``RuntimeWarning`` naming why."""
        why = _prov.precision_unrunnable(precision, chosen)
        if why is None:
            return precision
        self.precision_fallback = why
        warnings.warn(f"{self.path}: {why}; running float32", RuntimeWarning, stacklevel=3)
        return "fp32"

    # -- the contract ---------------------------------------------------------------------------------
    @property
    def channels(self) -> list[str]:
        return list(self.metadata.channels)

    @property
    def crop_size(self) -> int:
        return self.metadata.crop_size

    @property
    def intensity(self) -> dict:
        return dict(self.metadata.intensity)

    @property
    def feature_dim(self) -> int:
        return self.metadata.feature_dim

    def check_input(self, channels: Sequence[str] | None = None, crop_size: int | None = None,
                    intensity: Mapping[str, Any] | None = None) -> None:
        """Raise ``ValueError`` naming each field (channels by name and order, crop size, intensity) that differs."""
        check_matches(self.metadata, channels=channels, crop_size=crop_size, intensity=intensity,
                      source=str(self.path))

    def _validate(self, crops) -> np.ndarray:
        if not isinstance(crops, np.ndarray):
            raise ValueError(f"{self.path}: crops must be a numpy array, got {type(crops).__name__}")
        problems = []
        if crops.ndim != 4:
            raise ValueError(f"{self.path}: crops must be N x C x H x W, got shape {crops.shape}")
        if crops.shape[1] != len(self.metadata.channels):
            problems.append(f"channel count {crops.shape[1]} != model's {len(self.metadata.channels)} "
                            f"{list(self.metadata.channels)}")
        if crops.shape[2:] != (self.crop_size, self.crop_size):
            problems.append(f"crop size {crops.shape[2]} x {crops.shape[3]} != model's {self.crop_size} x "
                            f"{self.crop_size}")
        if crops.dtype != np.float32:
            problems.append(f"dtype {crops.dtype} != float32 (scale crops as {self.metadata.intensity} first)")
        if problems:
            raise ValueError(f"{self.path}: crops of shape {crops.shape} do not match the model: "
                             + "; ".join(problems))
        return np.ascontiguousarray(crops)

    # -- inference ------------------------------------------------------------------------------------
    def _run(self, crops: np.ndarray, names: list[str]) -> list[np.ndarray]:
        if self._lock is None:
            return self._run_unlocked(crops, names)
        with self._lock:
            return self._run_unlocked(crops, names)

    def _run_unlocked(self, crops: np.ndarray, names: list[str]) -> list[np.ndarray]:
        m = self.micro_batch
        if m is None or len(crops) <= m:
            return self._run_call(crops, names)
        parts = [self._run_call(crops[i:i + m], names) for i in range(0, len(crops), m)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(names))]

    def _run_call(self, crops: np.ndarray, names: list[str]) -> list[np.ndarray]:
        if self.io_binding:  # GPU providers; on the CPU only when asked (how the tests run this path)
            binding = self.session.io_binding()
            binding.bind_cpu_input(INPUT_NAME, crops)
            for n in names:
                binding.bind_output(n, self._output_device)
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()
        return self.session.run(names, {INPUT_NAME: crops})

    def run(self, crops: np.ndarray) -> np.ndarray:
        """Features (N x feature_dim float32) of ``crops`` (N x C x crop_size x crop_size float32)."""
        crops = self._validate(crops)
        if len(crops) == 0:
            return np.empty((0, self.feature_dim), np.float32)
        return self._run(crops, ["features"])[0]

    def output_dim(self, outputs: Sequence[str] = ("features",)) -> int:
        """Columns of :meth:`run_outputs` for ``outputs`` (``features``: feature_dim; ``probabilities``: the
        metadata's tasks; another: the graph's static width)."""
        self._check_outputs(outputs)
        dims = {o.name: o.shape[1] if len(o.shape) == 2 else None for o in self.session.get_outputs()}
        total = 0
        for n in outputs:
            d = (self.feature_dim if n == "features" else len(self.metadata.tasks or ()) if n == "probabilities"
                 else dims.get(n))
            if not isinstance(d, (int, np.integer)):
                raise ValueError(f"{self.path}: output {n!r} has no static width ({dims.get(n)!r})")
            total += int(d)
        return total

    def _check_outputs(self, outputs: Sequence[str]) -> list[str]:
        names = list(outputs)
        if not names or names[0] != "features" or len(set(names)) != len(names):
            raise ValueError(f"outputs must start with 'features' and name each output once, got {names}")
        missing = [n for n in names if n not in self.output_names]
        if missing:
            raise ValueError(f"{self.path}: no output(s) {missing} (the model's outputs: {self.output_names})")
        return names

    def run_outputs(self, crops: np.ndarray, outputs: Sequence[str] = ("features",)) -> np.ndarray:
        """The named outputs of ``crops`` side by side (``features`` first), N x :meth:`output_dim` float32;
        ``("features",)`` is :meth:`run`."""
        names = self._check_outputs(outputs)
        if names == ["features"]:
            return self.run(crops)
        crops = self._validate(crops)
        if len(crops) == 0:
            return np.empty((0, self.output_dim(names)), np.float32)
        return np.hstack(self._run(crops, names))

    def run_with_logits(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features, logits); the model must have been exported with ``logits=True``."""
        if "logits" not in self.output_names:
            raise ValueError(f"{self.path}: exported without logits (outputs {self.output_names})")
        crops = self._validate(crops)
        f, lg = self._run(crops, ["features", "logits"])
        return f, lg

    def iter_batches(self, source, batch_size: int, progress: bool = False,
                     outputs: Sequence[str] = ("features",)) -> Iterator[np.ndarray]:
        """Features of ``source`` in order, one block per batch of at most ``batch_size`` crops (with ``outputs``
        the named outputs side by side, features first: :meth:`run_outputs`).

        ``source``: an array-like with ``shape`` and slicing (numpy, Zarr) cut into consecutive batches, or an
        iterable of N_i x C x H x W arrays (e.g. one per site) regrouped into full batches of ``batch_size``
        (:func:`rebatch`: views of the blocks, a copy only for a batch that spans two).
        """
        from tqdm.auto import tqdm

        batch_size = int(batch_size)
        self._check_outputs(outputs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if hasattr(source, "shape") and hasattr(source, "__getitem__"):
            n = int(source.shape[0])
            with tqdm(total=n, unit="crop", desc="infer", disable=not progress) as bar:
                for i in range(0, n, batch_size):
                    block = np.asarray(source[i:i + batch_size])
                    yield self.run_outputs(block, outputs)
                    bar.update(len(block))
            return
        with tqdm(unit="crop", desc="infer", disable=not progress) as bar:
            for batch in rebatch((self._validate(b) for b in _as_blocks(source)), batch_size):
                yield self.run_outputs(batch, outputs)
                bar.update(len(batch))

    def run_batches(self, source, batch_size: int, progress: bool = False,
                    outputs: Sequence[str] = ("features",)) -> np.ndarray:
        """``iter_batches`` concatenated: features of every crop of ``source``, N x feature_dim (with ``outputs``:
        the named outputs side by side, N x :meth:`output_dim`)."""
        blocks = list(self.iter_batches(source, batch_size, progress, outputs))
        return np.concatenate(blocks) if blocks else np.empty((0, self.output_dim(outputs)), np.float32)

    def __repr__(self) -> str:
        return (f"ProfileSession({str(self.path)!r}, providers={self.providers}, channels={self.channels}, "
                f"crop_size={self.crop_size}, feature_dim={self.feature_dim}, precision={self.precision!r}, "
                f"micro_batch={self.micro_batch})")


def rebatch(blocks: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive batches of ``batch_size`` rows over ``blocks`` as if they were concatenated (the last may be
    shorter): a batch inside one block is a view of it; only a batch that spans blocks is copied, so a group of
    sites' crops is never held twice."""
    pending: list[np.ndarray] = []
    held = 0
    for b in blocks:
        at = 0
        if pending:  # finish the batch begun in earlier blocks
            at = min(batch_size - held, len(b))
            pending.append(b[:at])
            held += at
            if held < batch_size:
                continue
            yield np.concatenate(pending)
            pending, held = [], 0
        while len(b) - at >= batch_size:
            yield b[at:at + batch_size]
            at += batch_size
        if at < len(b):
            pending, held = [b[at:]], len(b) - at
    if pending:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending)


def _as_blocks(source: Iterable) -> Iterator[np.ndarray]:
    for item in source:
        a = np.asarray(item)
        yield a[None] if a.ndim == 3 else a
