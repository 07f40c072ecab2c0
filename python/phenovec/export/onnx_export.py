"""Export a profiling model (``ProfileNet``) to ONNX with its data contract embedded, verified against PyTorch.

Graph: input ``crops`` (N x C x H x W float32, N dynamic, H = W = ``crop_size``) -> output ``features``
(N x D: ``model.embed``, the pooled penultimate layer = the single-cell profile), with ``logits=True``
``logits`` (N x classes) and, with ``probabilities`` (default for a ``train.task: assays`` checkpoint),
``probabilities`` (N x tasks, the sigmoid of the head inside the graph; ``phenovec profile`` writes them). The model's ``metadata_props`` carry the channels, crop size, intensity scaling and
provenance (``phenovec.io.model_metadata``), so ``phenovec.runtime`` refuses mismatched input.

Exporter: the torch.export-based ("dynamo") exporter is the default. In torch 2.15 it is the maintained path
(the TorchScript exporter warns that it will be removed), it expresses the dynamic batch as a symbolic
``torch.export.Dim`` checked at export time (no trace-time constants specialised to the example batch), and it
runs without network (onnxscript is installed). Its lowest opset is 18: asking it for 17 emits 18 after a failed
down-conversion, so ``opset=17`` uses the TorchScript exporter (``exporter="auto"``), which emits opset 17
cleanly with ``dynamic_axes``. Both are tested (batch 1 and 7, parity <= 1e-4).

Writes are atomic: the model is written to a temporary sibling, checked for parity there, and only then
``os.replace``d onto ``path``; any failure leaves no file at ``path`` (and an older file there untouched).

Parity crops, in order of preference: the caller's ``parity_crops`` (``"given"``); for a checkpoint, the first
``n_store_crops`` crops of the crop store it was trained on (``data_config["crops"]``), scaled with its
``input_scaling`` rule (``"store"``, ``phenovec.export.parity.load_parity_crops``); else ``n_random_crops``
seeded uniform [0, 1) crops (``"random"``: a bare model, a checkpoint that records no store, or one whose store
is gone, which is warned about). ``ExportReport.parity_crops`` says which kind, ``parity_source`` where from.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from phenovec.export.parity import ParityReport, check_parity, load_parity_crops
from phenovec.io.model_metadata import ModelMetadata, normalise_intensity

MIN_OPSET = 17
DYNAMO_MIN_OPSET = 18
EXPORTERS = ("auto", "dynamo", "torchscript")


@dataclass
class ExportReport:
    path: str
    opset: int
    exporter: str
    feature_dim: int
    outputs: list
    channels: list
    crop_size: int
    intensity: dict
    weights_sha256: str
    size_bytes: int
    seconds: float
    parity: ParityReport | None = None
    max_abs_diff: float | None = None
    parity_crops: str | None = None  # "given" (the caller's), "store" (training's crops) or "random" (seeded)
    parity_source: str | None = None  # "given", the training crop store's path, or "random"
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["parity"] = self.parity.to_dict() if self.parity is not None else None
        return d


def weights_sha256(model) -> str:
    """SHA-256 of the model's ``state_dict``: for each key in sorted order, the key, dtype, shape and raw bytes.

    Independent of device, of the checkpoint container and of pickling; equal weights give equal hashes.
    """
    import torch

    h = hashlib.sha256()
    for k, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _feature_head(model, outputs: Sequence[str]):
    import torch

    class FeatureHead(torch.nn.Module):
        """``crops -> features`` (``model.embed``), or ``crops -> (features, logits?, probabilities?)`` from one
        ``forward_features`` pass (probabilities = the sigmoid of the logits, inside the graph)."""

        def __init__(self, m, names):
            super().__init__()
            self.m = m
            self.names = tuple(names)

        def forward(self, x):
            if self.names == ("features",):
                return self.m.embed(x)
            f, lg = self.m.forward_features(x)
            out = [f]
            if "logits" in self.names:
                out.append(lg)
            if "probabilities" in self.names:
                out.append(torch.sigmoid(lg))
            return tuple(out)

    return FeatureHead(model, outputs).eval()


def _resolve(model_or_checkpoint, channels, crop_size, intensity):
    """(model, channels, crop_size, intensity, extra metadata, CheckpointContract or None for a bare model);
    checkpoint values fill what is not given."""
    import torch

    extra: dict[str, Any] = {}
    ck = None
    if isinstance(model_or_checkpoint, torch.nn.Module):
        model = model_or_checkpoint
        if channels is None or crop_size is None or intensity is None:
            raise ValueError("export_onnx of a bare model needs channels=, crop_size= and intensity= "
                             "(a checkpoint path supplies them from its data_config)")
    else:
        from phenovec.export.checkpoint import CheckpointContract, load_contract

        ck = (model_or_checkpoint if isinstance(model_or_checkpoint, CheckpointContract)
              else load_contract(model_or_checkpoint))
        model = ck.model
        for name, given, stored in (("channels", channels, ck.channels), ("crop_size", crop_size, ck.crop_size),
                                    ("intensity", intensity, ck.intensity)):
            if given is not None:
                norm = (list(given) if name == "channels" else int(given) if name == "crop_size"
                        else normalise_intensity(given))
                ref = normalise_intensity(stored) if name == "intensity" else stored
                if norm != ref:
                    raise ValueError(f"{ck.path}: {name}={given!r} contradicts the checkpoint's data_config "
                                     f"({'box_size' if name == 'crop_size' else name} = {stored!r})")
        channels, crop_size, intensity, extra = ck.channels, ck.crop_size, ck.intensity, dict(ck.extra)
    for attr in ("embed", "forward_features"):
        if not callable(getattr(model, attr, None)):
            raise ValueError(f"model {type(model).__name__} has no {attr}(); export needs a ProfileNet-like model")
    channels = [str(c) for c in channels]
    if len(set(channels)) != len(channels):
        raise ValueError(f"channels has duplicates: {channels}")
    in_ch = getattr(model, "in_channels", None)
    if in_ch is not None and int(in_ch) != len(channels):
        raise ValueError(f"channel count mismatch: {len(channels)} channels {channels} given, the model "
                         f"({getattr(model, 'arch', type(model).__name__)}) takes in_channels={in_ch}")
    crop_size = int(crop_size)
    if crop_size < 1:
        raise ValueError(f"crop_size must be >= 1, got {crop_size}")
    return model, channels, crop_size, normalise_intensity(intensity), extra, ck


def _training_store_crops(ck, n: int):
    """(crops, store path) from the first ``n`` crops of the checkpoint's training crop store, scaled as in
    training; (None, None) when there is no checkpoint, it records no store, or the store is gone (warned)."""
    if ck is None or ck.crops is None:
        return None, None
    store = Path(ck.crops)
    if not (store / "crops.zarr").exists():
        warnings.warn(f"{ck.path}: data_config['crops'] = {store}: the training crop store is gone (no crops.zarr "
                      "there); the parity check falls back to seeded random crops, not real ones (give "
                      "parity_crops= / --parity-crops for a real-crop check)", UserWarning, stacklevel=3)
        return None, None
    return load_parity_crops(store, ck, n, what=f"{ck.path}: data_config['crops']"), str(store)


def export_proto(head, example, opset: int, exporter: str, outputs: Sequence[str], input_name: str = "crops"):
    """The ONNX ModelProto of ``head`` on ``example`` (batch axis dynamic) with the chosen exporter."""
    import torch

    # keep stdout clean for the CLI's JSON: exporters may print progress there
    with contextlib.redirect_stdout(sys.stderr):
        if exporter == "dynamo":
            prog = torch.onnx.export(head, (example,), None, dynamo=True, input_names=[input_name],
                                     output_names=list(outputs), dynamic_shapes=({0: torch.export.Dim("batch")},),
                                     opset_version=opset, external_data=False, optimize=True, verbose=False)
            return prog.model_proto
        import io
        import warnings

        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(head, (example,), buf, dynamo=False, input_names=[input_name], output_names=list(outputs),
                              dynamic_axes={n: {0: "batch"} for n in [input_name, *outputs]}, opset_version=opset,
                              do_constant_folding=True)
        import onnx

        return onnx.load_from_string(buf.getvalue())


def resolve_exporter(opset, exporter: str = "auto") -> tuple[int, str]:
    """(opset, exporter) checked: opset >= MIN_OPSET, ``auto`` -> dynamo from DYNAMO_MIN_OPSET on, else TorchScript."""
    opset = int(opset)
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if exporter == "auto":
        exporter = "dynamo" if opset >= DYNAMO_MIN_OPSET else "torchscript"
    if exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise ValueError(f"the dynamo exporter emits opset >= {DYNAMO_MIN_OPSET}; use exporter='torchscript' "
                         f"for opset {opset}")
    return opset, exporter


def export_onnx(
    model_or_checkpoint,
    path: str | os.PathLike,
    *,
    channels: Sequence[str] | None = None,
    crop_size: int | None = None,
    intensity: Mapping[str, Any] | None = None,
    opset: int = 18,
    logits: bool = False,
    probabilities: bool | None = None,
    tasks: Sequence[str] | None = None,
    dtype: str = "float32",
    exporter: str = "auto",
    parity: bool = True,
    parity_crops: np.ndarray | None = None,
    n_store_crops: int = 32,
    n_random_crops: int = 8,
    atol: float = 1e-4,
    seed: int = 0,
    input_kind: str = "crops",
    feature_layout: Mapping[str, Any] | None = None,
) -> ExportReport:
    """Export ``model_or_checkpoint`` (a ``ProfileNet``, a checkpoint path or a loaded ``CheckpointContract``)
    to ONNX at ``path``.

    ``channels`` / ``crop_size`` / ``intensity`` are required for a bare model and default to the checkpoint's
    ``data_config`` (a given value that contradicts it is an error). The model runs in eval mode; its training
    mode is restored afterwards. ``logits``: also output the head's logits. ``probabilities``: also output
    ``sigmoid(logits)`` (N x tasks, the assay probabilities of a ``train.task: assays`` model; the metadata's
    ``tasks`` name them); ``None`` (default) = on exactly when the checkpoint records assay ``tasks``
    (``data_config["tasks"]``); ``tasks``: a bare model's task names (for a checkpoint they must equal its
    own). ``dtype`` is ``"float32"`` only: fp16 is a runtime choice (TensorRT
    ``trt_fp16_enable`` in ``phenovec.runtime``), so one exported file serves every provider. With ``parity``
    (default) the written model is compared with PyTorch on ``parity_crops`` (real crops scaled as model input)
    when given; else, for a checkpoint whose training crop store (``data_config["crops"]``) still exists, on
    its first ``n_store_crops`` crops scaled with the checkpoint's ``input_scaling`` rule; else on
    ``n_random_crops`` seeded uniform [0, 1) crops (a store that is gone is warned about). A difference above
    ``atol`` raises ``ParityError`` and nothing is written. The report's ``parity_crops`` (``"given"`` /
    ``"store"`` / ``"random"``) and ``parity_source`` (``"given"``, the store's path, ``"random"``) say which.

    ``input_kind`` / ``feature_layout``: recorded in the metadata (``phenovec.io.model_metadata``): ``"fields"``
    for a whole-field model (``crop_size`` = the field side), a per-channel layout for DeepProfiler's pretrained
    mode (``phenovec.export.pretrained``).
    """
    import onnx
    import torch

    import phenovec

    t0 = time.perf_counter()
    if dtype != "float32":
        raise ValueError(f"dtype={dtype!r}: only 'float32' export is supported; run fp16 through the runtime "
                         "(ProfileSession(precision='fp16') on TensorRT)")
    opset, exporter = resolve_exporter(opset, exporter)
    model, channels, crop_size, intensity, extra, ck = _resolve(model_or_checkpoint, channels, crop_size, intensity)
    kind = source = None
    if parity and parity_crops is None:
        parity_crops, store = _training_store_crops(ck, n_store_crops)
        kind, source = ("store", store) if store is not None else ("random", "random")
    elif parity:
        kind = source = "given"
    if parity_crops is not None:
        parity_crops = np.asarray(parity_crops)
        if parity_crops.ndim != 4 or parity_crops.shape[1:] != (len(channels), crop_size, crop_size):
            raise ValueError(f"parity_crops have shape {parity_crops.shape}, expected N x {len(channels)} x "
                             f"{crop_size} x {crop_size} (channels {channels}, crop_size {crop_size})")
        if parity_crops.dtype != np.float32:
            raise ValueError(f"parity_crops must be float32 scaled as {intensity}, got {parity_crops.dtype}")
    path = Path(path)
    if tasks is not None:
        if "tasks" in extra and tuple(str(t) for t in tasks) != tuple(extra["tasks"]):
            raise ValueError(f"tasks={list(tasks)} contradicts the checkpoint's data_config tasks "
                             f"{list(extra['tasks'])}")
        extra["tasks"] = tuple(str(t) for t in tasks)
    if probabilities is None:
        probabilities = bool(extra.get("tasks"))
    if probabilities:
        if not extra.get("tasks"):
            raise ValueError("probabilities=True needs the assay task names: a train.task: assays checkpoint "
                             "(data_config['tasks']) or tasks= for a bare model")
        n_out = getattr(model, "num_classes", None)
        if n_out is not None and int(n_out) != len(extra["tasks"]):
            raise ValueError(f"the model's head has {n_out} outputs but {len(extra['tasks'])} tasks are named")
    outputs = ["features"] + (["logits"] if logits else []) + (["probabilities"] if probabilities else [])
    was_training = model.training
    model.eval()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        head = _feature_head(model, outputs)
        gen = torch.Generator().manual_seed(seed)
        example = torch.rand(2, len(channels), crop_size, crop_size, generator=gen)  # batch 2: not specialised
        with torch.no_grad():
            ref = head(example)
        feats = ref[0] if len(outputs) > 1 else ref
        if feats.ndim != 2 or feats.shape[0] != 2:
            raise ValueError(f"model.embed returned shape {tuple(feats.shape)}, expected N x feature_dim")
        feature_dim = int(feats.shape[1])
        declared = getattr(model, "feature_dim", None)
        if declared is not None and int(declared) != feature_dim:
            raise ValueError(f"model.feature_dim = {declared} but embed() returns {feature_dim} columns")
        proto = export_proto(head, example, opset, exporter, outputs)
        got_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if got_opset != opset:
            raise ValueError(f"the {exporter} exporter emitted opset {got_opset}, not the requested {opset}")
        meta = ModelMetadata(
            channels=tuple(channels), crop_size=crop_size, intensity=intensity, feature_dim=feature_dim,
            outputs=tuple(outputs), arch=str(getattr(model, "arch", type(model).__name__)),
            model_config=dict(getattr(model, "config", {}) or {}), weights_sha256=weights_sha256(model),
            phenovec_version=phenovec.__version__, torch_version=torch.__version__, opset=opset,
            exporter=exporter, input_kind=input_kind,
            feature_layout=dict(feature_layout) if feature_layout is not None else None, **extra)
        del proto.metadata_props[:]
        for k, v in meta.to_props().items():
            proto.metadata_props.add(key=k, value=v)
        proto.producer_name, proto.producer_version = "phenovec", phenovec.__version__
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        rep = None
        if parity:
            crops = parity_crops
            if crops is None:
                crops = np.random.default_rng(seed).random((n_random_crops, len(channels), crop_size, crop_size),
                                                           dtype=np.float32)
            rep = check_parity(model, tmp, crops, atol=atol)
        os.replace(tmp, path)
    finally:
        model.train(was_training)
        if tmp.exists():
            tmp.unlink()
    return ExportReport(
        path=str(path), opset=opset, exporter=exporter, feature_dim=feature_dim, outputs=outputs,
        channels=channels, crop_size=crop_size, intensity=intensity, weights_sha256=meta.weights_sha256,
        size_bytes=path.stat().st_size, seconds=time.perf_counter() - t0, parity=rep,
        max_abs_diff=rep.max_abs_diff if rep else None, parity_crops=kind, parity_source=source,
        metadata=meta.to_props())
