"""Parity of an exported ONNX model with its PyTorch model: onnxruntime's CPU provider vs PyTorch eval mode.

The ``features`` output is compared with ``model.embed(crops)`` and, when exported, ``logits`` with
``model.forward(crops)`` and ``probabilities`` with its sigmoid; the statistic is the maximum absolute element-wise difference over all given crops
(the issue's target: <= 1e-4 in float32). Above ``atol`` ``ParityError`` is raised (unless ``raise_on_fail=False``).

The crops compared are real ones where possible: ``load_parity_crops`` reads the first N crops of a crop store
written by ``phenovec crop`` (``--parity-crops``, or the checkpoint's training store, ``data_config["crops"]``) and
scales them with the checkpoint's ``input_scaling`` rule (``phenovec.train.data.scale_batch``, training's rule).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


class ParityError(ValueError):
    """The ONNX model's outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class ParityReport:
    max_abs_diff: float  # over every output compared
    mean_abs_diff: float  # features only
    per_output: dict  # output name -> max abs diff
    n_crops: int
    atol: float
    reference_max_abs: float  # largest |PyTorch feature|: a tiny value makes the comparison vacuous
    passed: bool
    provider: str = "CPUExecutionProvider"

    def to_dict(self) -> dict:
        return asdict(self)


def reference_outputs(model, crops: np.ndarray, names, batch_size: int = 64) -> dict[str, np.ndarray]:
    """PyTorch eval-mode outputs for ``names`` (``features`` = ``model.embed``, ``logits`` = ``model.forward``,
    ``probabilities`` = ``sigmoid(model.forward)``)."""
    import torch

    was_training = model.training
    model.eval()
    out: dict[str, list] = {n: [] for n in names}
    try:
        with torch.no_grad():
            for i in range(0, len(crops), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(crops[i:i + batch_size]))
                if "logits" in names or "probabilities" in names:
                    f, lg = model.forward_features(x)
                    if "logits" in names:
                        out["logits"].append(lg.numpy())
                    if "probabilities" in names:
                        out["probabilities"].append(torch.sigmoid(lg).numpy())
                else:
                    f = model.embed(x)
                out["features"].append(f.numpy())
    finally:
        model.train(was_training)
    return {n: np.concatenate(v) for n, v in out.items()}


def check_parity(model, onnx_path: str | os.PathLike, crops: np.ndarray, atol: float = 1e-4, *,
                 batch_size: int = 64, raise_on_fail: bool = True) -> ParityReport:
    """Run ``crops`` (N x C x H x W float32) through PyTorch and onnxruntime (CPU) and compare every output."""
    import onnxruntime as ort

    crops = np.asarray(crops)
    if crops.dtype != np.float32 or crops.ndim != 4 or len(crops) == 0:
        raise ValueError(f"parity crops must be a non-empty N x C x H x W float32 array, got {crops.dtype} "
                         f"{crops.shape}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    if "features" not in names:
        raise ValueError(f"{onnx_path}: has no 'features' output (outputs: {names}); not a phenovec export")
    inp = sess.get_inputs()[0]
    want = tuple(inp.shape[1:])
    if tuple(crops.shape[1:]) != want:
        raise ValueError(f"parity crops have shape {crops.shape[1:]} per crop, the model {onnx_path} takes {want}")
    got: dict[str, list] = {n: [] for n in names}
    for i in range(0, len(crops), batch_size):
        for n, v in zip(names, sess.run(names, {inp.name: np.ascontiguousarray(crops[i:i + batch_size])})):
            got[n].append(v)
    ref = reference_outputs(model, crops, names, batch_size)
    per = {}
    for n in names:
        o = np.concatenate(got[n])
        if o.shape != ref[n].shape:
            raise ParityError(f"{onnx_path}: output {n!r} has shape {o.shape}, PyTorch gives {ref[n].shape}")
        per[n] = float(np.max(np.abs(o.astype(np.float64) - ref[n])))
    feats = np.concatenate(got["features"]).astype(np.float64)
    rep = ParityReport(max_abs_diff=max(per.values()), mean_abs_diff=float(np.mean(np.abs(feats - ref["features"]))),
                       per_output=per, n_crops=int(len(crops)), atol=float(atol),
                       reference_max_abs=float(np.max(np.abs(ref["features"]))),
                       passed=bool(max(per.values()) <= atol))
    if raise_on_fail and not rep.passed:
        raise ParityError(f"{onnx_path}: ONNX vs PyTorch max abs difference {rep.max_abs_diff:.3g} > atol {atol:g} "
                          f"on {rep.n_crops} crops (per output: {per})")
    return rep


def load_parity_crops(path, contract, n: int, what: str = "--parity-crops") -> np.ndarray:
    """The first ``n`` crops of the crop store at ``path`` (a ``phenovec crop`` folder or its ``crops.zarr``),
    scaled to model input as in training (``contract.intensity["input_scaling"]`` / ``dtype_max``); checks them
    against ``contract``'s channels (the store's manifest) and crop size. ``what`` names the store's origin in
    errors (the CLI flag, or the checkpoint's ``data_config['crops']``)."""
    import zarr

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what}: {p} does not exist")
    arr_path = p / "crops.zarr" if (p / "crops.zarr").exists() else p
    manifest = arr_path.parent / "manifest.json"
    if manifest.is_file():
        chans = json.loads(manifest.read_text()).get("config", {}).get("channels")
        if chans is not None and list(chans) != list(contract.channels):
            raise ValueError(f"{what} {p}: channels {chans} differ from the checkpoint's {contract.channels}")
    arr = zarr.open_array(str(arr_path), mode="r")
    if arr.ndim != 4 or tuple(arr.shape[1:]) != (len(contract.channels), contract.crop_size, contract.crop_size):
        raise ValueError(f"{what} {arr_path}: shape {arr.shape}, expected N x {len(contract.channels)} x "
                         f"{contract.crop_size} x {contract.crop_size}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what} {arr_path}: holds no crops")
    raw = np.asarray(arr[: int(n)])
    rule = contract.intensity.get("input_scaling")
    if rule is None:
        if raw.dtype != np.float32:
            raise ValueError(f"{what} {arr_path}: {raw.dtype} crops and no input_scaling rule in the "
                             "checkpoint to scale them")
        return raw
    import torch

    from phenovec.train.data import scale_batch

    return scale_batch(torch.from_numpy(raw.astype(np.float32) if raw.dtype == np.uint16 else raw), rule,
                       float(contract.intensity.get("dtype_max", 1.0))).numpy()
