"""DeepProfiler's pretrained mode: each Cell Painting channel through an ImageNet-style RGB network on its own,
the per-channel feature vectors concatenated (C x D).

DeepProfiler (``plugins/crop_generators/repeat_channel_crop_generator.py`` and ``learning/profiling.py``; the
thesis, Bornholdt 2021, section 4: "each Cell Painting channel is replicated three times to fit the model input
... DeepProfiler then concatenates the output vectors", 5 x 1,280 = 6,400-d for EfficientNet-B0 and 5 x 2,048 =
10,240-d for ResNet-50) feeds every channel of a crop as a grey image replicated to RGB and concatenates the
outputs in the configured channel order (DeepProfiler #329, #351: the order is the config's channel order).

:class:`ChannelReplicatedNet` does the same inside one graph, so it exports to one ONNX model with the usual
N x C x H x W input and N x (C x D) ``features`` output, and profiles through ``phenovec.profile`` unchanged:

1. ``x`` (N x C x H x W, float32, scaled by the model's intensity rule; default DeepProfiler's per-crop
   per-channel min-max to [0, 1]) is viewed as N*C grey images, cell-major (cell 0's channels first);
2. optionally resized to ``input_size`` (DeepProfiler's ``profile.use_pretrained_input_size``): bilinear with
   half-pixel centres, no antialiasing (``torch.nn.functional.interpolate(align_corners=False)``; TF2's
   ``tf.image.resize`` bilinear. DeepProfiler's TF1 ``resize_images`` used corner-aligned sampling instead);
3. replicated to 3 channels (``grayscale_to_rgb``) and, with ``normalize="imagenet"``, standardised with the
   ImageNet statistics torchvision's weights expect (mean 0.485, 0.456, 0.406; SD 0.229, 0.224, 0.225 on [0, 1]
   input). DeepProfiler's Keras models carried their own preprocessing; torchvision weights need this one;
4. the backbone's globally average-pooled penultimate features (D per grey image: ``ProfileNet.embed``);
5. reshaped to N x (C x D): channel ``c``'s block is columns ``c*D .. (c+1)*D``, named ``feature_<channel>_<i>``
   (``ModelMetadata.feature_names``, metadata ``feature_layout``).

Weights: a user's torchvision ``state_dict`` file for the same architecture (ImageNet weights cannot be
downloaded here), read with ``torch.load(weights_only=True)`` through
``phenovec.train.models.build_model`` (its classifier head is ignored). Without a file the network is randomly
initialised (for benchmarks and tests) and a ``UserWarning`` says so. There is no classifier, so no ``logits``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from phenovec.export.onnx_export import ExportReport, export_onnx

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZE = ("imagenet", None)
DEFAULT_INTENSITY = {"input_scaling": "minmax"}


class ChannelReplicatedNet(nn.Module):
    """``embed(x)``: N x C x H x W -> N x (C x D), each channel through ``backbone`` as grey -> RGB (module doc)."""

    def __init__(self, backbone: nn.Module, channels: Sequence[str], input_size: int | None = None,
                 normalize: str | None = "imagenet", weights_file_sha256: str | None = None) -> None:
        super().__init__()
        if int(getattr(backbone, "in_channels", 3)) != 3:
            raise ValueError(f"pretrained mode needs an RGB backbone (in_channels 3), got "
                             f"in_channels={backbone.in_channels}")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {list(NORMALIZE)}, got {normalize!r}")
        channels = [str(c) for c in channels]
        if not channels or len(set(channels)) != len(channels):
            raise ValueError(f"channels must be non-empty and distinct, got {channels}")
        if input_size is not None and int(input_size) < 32:
            raise ValueError(f"input_size must be >= 32 (or None: no resize), got {input_size}")
        self.backbone = backbone
        self.channels = channels
        self.in_channels = len(channels)
        self.input_size = None if input_size is None else int(input_size)
        self.normalize = normalize
        self.channel_dim = int(backbone.feature_dim)
        self.feature_dim = self.in_channels * self.channel_dim
        self.arch = f"pretrained-{backbone.arch}"
        self.weights_file_sha256 = weights_file_sha256
        mean = torch.tensor(IMAGENET_MEAN if normalize else (0.0, 0.0, 0.0)).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD if normalize else (1.0, 1.0, 1.0)).view(1, 3, 1, 1)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    @property
    def config(self) -> dict[str, Any]:
        return {"mode": "pretrained", "backbone": self.backbone.arch, "channels": list(self.channels),
                "channel_dim": self.channel_dim, "input_size": self.input_size, "normalize": self.normalize,
                "weights_file_sha256": self.weights_file_sha256}

    @property
    def feature_layout(self) -> dict[str, Any]:
        return {"kind": "per_channel", "channels": list(self.channels), "dim": self.channel_dim}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            if x.ndim != 4 or x.shape[1] != self.in_channels:
                raise ValueError(f"expected N x {self.in_channels} x H x W (channels {self.channels}), got "
                                 f"{tuple(x.shape)}")
        h, w = x.shape[2], x.shape[3]
        g = x.reshape(-1, 1, h, w)  # cell-major: rows (cell 0, ch 0), (cell 0, ch 1), ...
        if self.input_size is not None:
            g = nn.functional.interpolate(g, size=(self.input_size, self.input_size), mode="bilinear",
                                          align_corners=False, antialias=False)
        g = (g.expand(-1, 3, -1, -1) - self.mean) / self.std
        f = self.backbone.embed(g)
        return f.reshape(-1, self.in_channels * self.channel_dim)

    def forward_features(self, x: torch.Tensor):
        raise ValueError("pretrained mode has no classifier: export it without logits")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


def pretrained_model(arch: str, channels: Sequence[str], weights: str | os.PathLike | None = None, *,
                     input_size: int | None = None, normalize: str | None = "imagenet",
                     seed: int | None = 0) -> ChannelReplicatedNet:
    """A :class:`ChannelReplicatedNet` over torchvision ``arch`` (``phenovec.train.models.ARCHS``) with the
    user's RGB ``weights`` file (a ``state_dict`` of the torchvision model), eval mode."""
    from phenovec.train.models import build_model

    sha = None
    if weights is None:
        warnings.warn(f"pretrained mode without a weights file: {arch} is randomly initialised (seed {seed}); "
                      "give the ImageNet state_dict file for real profiles", UserWarning, stacklevel=2)
    else:
        from phenovec.io.digest import file_sha256

        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights file not found: {weights}")
        sha = file_sha256(weights)
    backbone = build_model(arch, 3, 1, weights=weights, seed=seed)
    return ChannelReplicatedNet(backbone, channels, input_size=input_size, normalize=normalize,
                                weights_file_sha256=sha).eval()


def export_pretrained(arch: str, path: str | os.PathLike, *, channels: Sequence[str], crop_size: int,
                      weights: str | os.PathLike | None = None, input_size: int | None = None,
                      normalize: str | None = "imagenet", intensity: Mapping[str, Any] | None = None,
                      seed: int | None = 0, **export_kwargs) -> ExportReport:
    """Export DeepProfiler's pretrained mode of ``arch`` (module docstring) to ONNX at ``path``.

    ``crop_size``: the crops' side (what profiling cuts); ``intensity``: the crops' scaling rule (default
    ``{"input_scaling": "minmax"}``: per-crop per-channel min-max, DeepProfiler's). Other keyword arguments go to
    :func:`phenovec.export.export_onnx` (``opset``, ``parity_crops``, ``atol``, ...); ``logits`` is refused.
    """
    if export_kwargs.get("logits"):
        raise ValueError("pretrained mode has no classifier: logits=True is not available")
    export_kwargs.pop("logits", None)
    model = pretrained_model(arch, channels, weights, input_size=input_size, normalize=normalize, seed=seed)
    return export_onnx(model, path, channels=list(channels), crop_size=int(crop_size),
                       intensity=dict(intensity) if intensity is not None else dict(DEFAULT_INTENSITY),
                       feature_layout=model.feature_layout, **export_kwargs)

