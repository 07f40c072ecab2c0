"""Grad-CAM for phenovec's PyTorch image models, with a heat map per stain channel (Selvaraju et al. 2017; the RxRx2
deck's "Grad-CAM over the 6 stain channels").

**Score** being explained, per crop:

* a classifier (``train.task: classify``, a checkpoint with classes): the logit of ``target`` (a class index or
  name; default: the crop's predicted class);
* an embedding model (``train.task: simclr``, or any model given a ``reference``): the cosine similarity between
  the crop's embedding (``model.embed``, the exported profile) and a reference embedding: given as a vector, the
  mean embedding of the crops of one ``data.label`` value (``target`` = that value), or by default the mean
  embedding of the chosen crops ("what makes these crops alike"). The similarity of a crop to *itself* has zero
  gradient, so a single crop needs a reference.

**Target layer** (``target_layer``): the backbone's last convolutional block, found by the architecture:
``backbone.layer4`` for the ResNets, ``backbone.features[-1]`` (the last Conv-BN-SiLU) for the EfficientNets,
``backbone.features`` (dense block 4 and its BatchNorm) for DenseNet-121, ``backbone.block4`` (the dilated block) for
GapNet and SC-CNN; another model may name its own with a ``gradcam_layer()`` method, else the last ``nn.Conv2d``. Every
phenovec backbone reduces the input by 32, so the last block of a 64-px crop is 2 x 2; ``layer=`` takes a module
name (``"backbone.layer3"``) for a finer map.

**Maps** (``grad_cam``):

* ``cam`` (N x H x W, in [0, 1]): Grad-CAM proper: the block's activations weighted by the spatial mean of the
  score's gradient, summed over the block's channels, ReLU, bilinearly upsampled to the crop and divided by its
  maximum. It is one map per crop: the first convolution mixes the stains, so the last block has no per-stain
  spatial map. It is drawn over each stain channel.
* ``channel_maps`` (N x C x H x W, >= 0): the heat map *per channel*: ``cam`` times the positive part of the
  gradient x input of that input channel (``relu(x_c * d score / d x_c)``), i.e. Guided Grad-CAM with
  gradient x input in place of guided back-propagation. Divided by one maximum per crop over all channels, so the
  channels are comparable: the stain whose pixels drive the score is bright, the others dim.
* ``channel_share`` (N x C): each channel's share of the summed ``channel_maps``.

``gradcam_pngs(checkpoint, crops_path, rows, out_dir, target=None)`` draws one PNG per crop (rows: each stain;
each stain with the CAM overlaid; the per-channel maps on one colour scale, titled with their share) and writes
``channel_share.csv`` (row, target, score, channel, share) beside them. Figures are drawn with matplotlib's Agg
canvas (no display) and written atomically.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["GradCamResult", "grad_cam", "gradcam_pngs", "target_layer"]


@dataclass
class GradCamResult:
    cam: np.ndarray  # N x H x W in [0, 1]
    channel_maps: np.ndarray  # N x C x H x W >= 0, one scale per crop
    channel_share: np.ndarray  # N x C, rows sum to 1 (0 where the score has no positive evidence)
    scores: np.ndarray  # N: the explained score (logit or cosine similarity)
    targets: list  # N: the class index explained, or "similarity"
    layer: str  # the target layer's module name


def _module_name(model, module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    return type(module).__name__


def target_layer(model, layer: str | None = None):
    """(module, name) of the layer whose activations Grad-CAM weighs (module docstring)."""
    from torch import nn

    if layer is not None:
        modules = dict(model.named_modules())
        if layer not in modules:
            conv_blocks = [n for n, m in model.named_modules() if n.count(".") <= 1 and n][:20]
            raise ValueError(f"layer {layer!r} is not a module of the model (e.g. {', '.join(conv_blocks)})")
        return modules[layer], layer
    if callable(getattr(model, "gradcam_layer", None)):
        module = model.gradcam_layer()
        return module, _module_name(model, module)
    arch = str(getattr(model, "arch", ""))
    backbone = getattr(model, "backbone", None)
    if arch.startswith("resnet") and backbone is not None:
        return backbone.layer4, "backbone.layer4"
    if arch.startswith("efficientnet") and backbone is not None:
        return backbone.features[-1], f"backbone.features.{len(backbone.features) - 1}"
    if arch.startswith("densenet") and backbone is not None:
        return backbone.features, "backbone.features"  # dense block 4 + its final BatchNorm
    if arch in ("gapnet", "sc_cnn") and backbone is not None:
        return backbone.block4, "backbone.block4"
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM; name one with layer=")
    return convs[-1][1], convs[-1][0]


def grad_cam(model, x, target=None, reference=None, layer: str | None = None) -> GradCamResult:
    """Grad-CAM maps of ``x`` (N x C x H x W float, scaled as model input) for ``model`` (module docstring).

    ``target``: None (each crop's predicted class), a class index, or a sequence of N indices; ignored when
    ``reference`` (a D-vector in the embedding space) is given: the score is then the cosine similarity of each
    crop's ``model.embed`` to it. The model is run in eval mode and its mode restored.
    """
    import torch
    import torch.nn.functional as F

    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"grad_cam needs an N x C x H x W float tensor, got {x.dtype} {tuple(x.shape)}")
    n = x.shape[0]
    module, name = target_layer(model, layer)
    captured = {}

    def hook(_, __, out):
        captured["a"] = out
        out.register_hook(lambda g: captured.__setitem__("g", g))

    was_training = model.training
    model.eval()
    handle = module.register_forward_hook(hook)
    try:
        xi = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            if reference is not None:
                ref = torch.as_tensor(np.asarray(reference, dtype=np.float32)).to(x.device).reshape(-1)
                emb = model.embed(xi)
                if emb.shape[1] != ref.shape[0]:
                    raise ValueError(f"reference has {ref.shape[0]} values, the model's embedding {emb.shape[1]}")
                score = F.cosine_similarity(emb, ref[None, :].expand_as(emb), dim=1)
                targets = ["similarity"] * n
            else:
                logits = model(xi)
                if target is None:
                    idx = logits.detach().argmax(1)
                else:
                    idx = torch.as_tensor(np.broadcast_to(np.asarray(target, dtype=np.int64), (n,)).copy(),
                                          device=x.device)
                    if (idx < 0).any() or (idx >= logits.shape[1]).any():
                        raise ValueError(f"target class {target!r} is outside the model's {logits.shape[1]} outputs")
                score = logits.gather(1, idx[:, None])[:, 0]
                targets = [int(i) for i in idx.cpu()]
            score.sum().backward()  # eval mode: each crop's score depends on its own input only
    finally:
        handle.remove()
        model.train(was_training)
    if "g" not in captured:
        raise ValueError(f"layer {name!r} is not on the path to the score (no gradient reached it)")
    a, g = captured["a"].detach().float(), captured["g"].float()
    if a.ndim != 4:
        raise ValueError(f"layer {name!r} gives {a.ndim}-d activations; Grad-CAM needs N x K x h x w")
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    evidence = F.relu(xi.detach().float() * xi.grad.float())
    maps = cam[:, None] * evidence
    maps = maps / maps.flatten(1).amax(1).clamp_min(1e-30)[:, None, None, None]
    total = maps.sum(dim=(2, 3))
    share = total / total.sum(1, keepdim=True).clamp_min(1e-30)
    return GradCamResult(cam.cpu().numpy(), maps.cpu().numpy(), share.cpu().numpy(),
                         score.detach().float().cpu().numpy(), targets, name)


def _read_crops(crops, rows: np.ndarray, rule: str, dtype_max: float):
    import torch

    from phenovec.train.data import ChunkReader, scale_batch

    x = ChunkReader(crops.path, crops.chunk_cells).read(rows)
    if x.dtype == np.uint16:
        x = x.astype(np.int32)
    return scale_batch(torch.from_numpy(x), rule, dtype_max)


def _reference_of_label(model, crops, ck: dict, value: str, rule: str, dtype_max: float, n_max: int = 256):
    """Mean embedding of up to ``n_max`` crops (seeded sample) whose label column equals ``value``."""
    import torch

    dc = ck["data_config"]
    column = dc.get("knn_label_column") or dc.get("label_column") or ck.get("config", {}).get("data", {}).get("label")
    if column is None or column not in crops.cells.columns:
        raise ValueError(f"target {value!r}: the checkpoint names no label column present in the crop table "
                         f"({column!r}); give a reference embedding instead")
    hit = crops.cells.loc[crops.cells[column].astype(str) == str(value), "row"].to_numpy(dtype=np.int64)
    if not len(hit):
        known = sorted(crops.cells[column].astype(str).unique())[:20]
        raise ValueError(f"target {value!r}: no crop has {column} = {value!r} (values: {', '.join(known)})")
    if len(hit) > n_max:
        hit = np.sort(np.random.default_rng(0).choice(hit, n_max, replace=False))
    with torch.no_grad():
        return model.embed(_read_crops(crops, hit, rule, dtype_max)).float().mean(0).numpy()


def _figure(path: Path, x: np.ndarray, cam: np.ndarray, maps: np.ndarray, share: np.ndarray, channels: list,
            title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    c = x.shape[0]
    fig = Figure(figsize=(2.0 * c + 0.6, 6.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, c, squeeze=False)
    vmax = float(maps.max()) or 1.0
    for i in range(c):
        img = x[i]
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        axes[0, i].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[0, i].set_title(str(channels[i]), fontsize=9)
        axes[1, i].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[1, i].imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        im = axes[2, i].imshow(maps[i], cmap="inferno", vmin=0, vmax=vmax)
        axes[2, i].set_title(f"share {share[i]:.2f}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("stain", fontsize=9)
    axes[1, 0].set_ylabel("Grad-CAM", fontsize=9)
    axes[2, 0].set_ylabel("per channel", fontsize=9)
    fig.colorbar(im, ax=list(axes[2]), fraction=0.02, pad=0.01)
    fig.suptitle(title, fontsize=10)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def gradcam_pngs(checkpoint, crops_path, rows: Sequence[int], out_dir, target=None, layer: str | None = None,
                 exclude_edge=("dropped", "invalid")) -> list[Path]:
    """One Grad-CAM PNG per crop (``gradcam_row<row>.png``) and ``channel_share.csv`` in ``out_dir``.

    ``rows``: crops by their ``row`` (the index in ``crops.zarr``, the cell table's ``row`` column).
    ``target``: for a classifier, None (predicted class), a class index or a class name; for an embedding model
    (no classes), None (the mean embedding of the chosen crops, at least 2), a ``data.label`` value (the mean
    embedding of its crops) or a reference vector; a vector also works for a classifier (module docstring).
    """
    import pandas as pd

    from phenovec.io.profiles import write_table
    from phenovec.train.checkpoint import load_checkpoint, model_from_checkpoint
    from phenovec.train.data import open_crops

    ck = load_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    model, ck = model_from_checkpoint(ck)
    dc = ck["data_config"]
    crops = open_crops(crops_path, exclude_edge)
    if list(dc.get("crop_shape", crops.shape[1:])) != list(crops.shape[1:]):
        raise ValueError(f"{crops_path}: crops are {list(crops.shape[1:])} but the model was trained on "
                         f"{dc['crop_shape']}")
    rows = np.asarray(list(rows), dtype=np.int64)
    if not len(rows):
        raise ValueError("gradcam_pngs: no rows given")
    present = set(crops.cells["row"].to_numpy(dtype=np.int64).tolist())
    missing = [int(r) for r in rows if int(r) not in present]
    if missing:
        raise ValueError(f"{crops_path}: row(s) {missing[:10]} are not crops of the store (cells.parquet 'row', after "
                         f"exclude_edge {list(exclude_edge)})")
    rule, dtype_max = dc["input_scaling"], float(dc.get("dtype_max", 1.0))
    x = _read_crops(crops, rows, rule, dtype_max)
    classes = [str(c) for c in dc.get("classes") or []]
    reference = None
    if target is not None and not isinstance(target, (str, int, np.integer)):
        reference = np.asarray(target, dtype=np.float32)
    elif classes:
        if isinstance(target, str):
            if target in classes:
                target = classes.index(target)
            elif target.isdigit():  # a class index given as text (the CLI's --target 3)
                target = int(target)
            else:
                raise ValueError(f"target {target!r} is not a class of {checkpoint} (classes: {', '.join(classes)})")
    elif isinstance(target, str):
        reference = _reference_of_label(model, crops, ck, target, rule, dtype_max)
    elif target is None:
        if len(rows) < 2:
            raise ValueError("an embedding model's Grad-CAM explains the similarity to a reference: give target (a "
                             "label value or a reference embedding) or at least 2 rows (their mean is the reference)")
        import torch

        with torch.no_grad():
            reference = model.embed(x).float().mean(0).numpy()
    else:
        raise ValueError(f"target {target!r}: {checkpoint} has no classes (an embedding model); give a label value "
                         "or a reference embedding")
    res = grad_cam(model, x, None if reference is not None else target, reference, layer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    channels = list(dc.get("channels") or [f"ch{i}" for i in range(x.shape[1])])
    paths, table = [], []
    xs = x.numpy()
    for i, r in enumerate(rows):
        what = (f"similarity to {'the mean of the chosen crops' if target is None else target if isinstance(target, str) else 'the reference'}"
                if res.targets[i] == "similarity" else
                f"class {classes[res.targets[i]] if classes else res.targets[i]}")
        title = f"row {int(r)}: {what} (score {res.scores[i]:.3g}; layer {res.layer})"
        paths.append(_figure(out / f"gradcam_row{int(r)}.png", xs[i], res.cam[i], res.channel_maps[i],
                             res.channel_share[i], channels, title))
        table += [{"row": int(r), "target": what, "score": float(res.scores[i]), "channel": channels[c],
                   "share": float(res.channel_share[i, c])} for c in range(len(channels))]
    write_table(pd.DataFrame(table), out / "channel_share.csv")
    return paths
