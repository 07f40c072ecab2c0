"""The model's input contract, as profiling applies it: channels by name, crop size and input scaling.

Everything comes from the ONNX model's metadata (``phenovec.io.model_metadata``), never from the caller, so the
crops a worker cuts can never disagree with what the model was trained on:

- ``channels``: the model's channel names in input order. The image index (or crop store) is matched *by name*:
  its channel columns / planes are reordered into the model's order; a model channel the input lacks is an error
  naming it.
- ``box_size`` = ``crop_size``.
- ``intensity`` (``phenovec.export.checkpoint``: ``input_scaling`` "none" | "scale" | "minmax", ``dtype_max``,
  optional ``crop_rescale`` / ``crop_intensity`` = how training crops were cut). The same rules as training's
  ``phenovec.train.data.scale_batch``:

  * ``minmax``: per-crop per-channel min-max to [0, 1] (DeepProfiler; a constant plane -> 0). From images this is
    ``_core.crop_site(..., rescale=True)`` (float32), after ``crop_intensity`` when one was recorded;
  * ``scale``: the stored crop dtype divided by ``dtype_max``: from images ``crop_site`` with ``crop_intensity`` /
    ``crop_rescale`` and ``dtype`` uint8 (``dtype_max`` 255) or uint16 (65,535), then ``/ dtype_max``;
  * ``none``: crops are used as stored (float32): ``crop_site`` with ``crop_intensity`` / ``crop_rescale`` and
    ``dtype="float32"``.

  Illumination correction at crop time is not part of the recorded contract; a model whose intensity names
  ``crop_illumination`` is refused rather than profiled without it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

RULES = ("none", "scale", "minmax")


@dataclass(frozen=True)
class InputContract:
    channels: tuple[str, ...]
    box_size: int
    rule: str
    dtype_max: float
    crop_rescale: bool
    crop_intensity: tuple | None

    def crop_site_args(self) -> tuple[bool, dict]:
        """(``rescale``, keyword options) for ``_core.crop_site`` that cut crops as training stored them."""
        opts: dict = {}
        if self.crop_intensity is not None:
            opts["intensity"] = self.crop_intensity
        if self.rule == "minmax":
            return True, {**opts, "dtype": "float32"}
        if self.rule == "scale":
            opts["dtype"] = "uint8" if self.dtype_max == 255 else "uint16"
            return self.crop_rescale, opts
        return self.crop_rescale, {**opts, "dtype": "float32"}

    @property
    def cuts_float32(self) -> bool:
        """Whether :meth:`crop_site_args` cut float32 crops (rules minmax and none), which are the model input."""
        return self.crop_site_args()[1].get("dtype") == "float32"

    def model_input_from_cut(self, crops: np.ndarray) -> np.ndarray:
        """Crops cut by ``crop_site`` with :meth:`crop_site_args` -> float32 model input."""
        if self.rule == "scale":
            return (crops.astype(np.float32) / np.float32(self.dtype_max)).astype(np.float32, copy=False)
        return np.ascontiguousarray(crops, dtype=np.float32)

    def model_input_from_stored(self, crops: np.ndarray) -> np.ndarray:
        """Stored crops (a ``phenovec crop`` store) -> float32 model input, as ``scale_batch`` in training."""
        if self.rule == "none":
            return np.ascontiguousarray(crops, dtype=np.float32)
        if self.rule == "scale":
            return (crops.astype(np.float32) / np.float32(self.dtype_max)).astype(np.float32, copy=False)
        return minmax(crops)


def minmax(crops: np.ndarray) -> np.ndarray:
    """Per-crop per-channel min-max to [0, 1] in float32 (``scale_batch``'s ``minmax``; constant plane -> 0)."""
    x = crops.astype(np.float32)
    lo = x.min(axis=(2, 3), keepdims=True)
    span = x.max(axis=(2, 3), keepdims=True) - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)


def contract_from_metadata(meta, source: str = "model") -> InputContract:
    """The :class:`InputContract` of a :class:`phenovec.io.model_metadata.ModelMetadata`; errors name the key."""
    inten = dict(meta.intensity)
    rule = inten.get("input_scaling")
    if rule not in RULES:
        raise ValueError(f"{source}: metadata intensity.input_scaling is {rule!r}; expected one of {list(RULES)} "
                         f"(intensity = {inten})")
    if inten.get("crop_illumination") not in (None, False):
        raise ValueError(f"{source}: the model was trained on illumination-corrected crops "
                         f"(intensity.crop_illumination = {inten['crop_illumination']!r}); profiling does not "
                         "apply illumination correction")
    dtype_max = float(inten.get("dtype_max", 1.0))
    if rule == "scale" and dtype_max not in (255.0, 65535.0):
        raise ValueError(f"{source}: intensity.dtype_max = {dtype_max} with input_scaling 'scale'; expected 255 "
                         "(uint8 crops) or 65535 (uint16 crops)")
    ci = inten.get("crop_intensity")
    if ci is not None:
        try:
            kind, lo, hi = ci
            ci = (str(kind), float(lo), float(hi))
        except (TypeError, ValueError):
            raise ValueError(f"{source}: intensity.crop_intensity = {ci!r} is not (kind, lo, hi)") from None
    return InputContract(channels=tuple(meta.channels), box_size=int(meta.crop_size), rule=rule,
                         dtype_max=dtype_max, crop_rescale=bool(inten.get("crop_rescale", False)),
                         crop_intensity=ci)


def match_channels(model_channels: Sequence[str], available: Sequence[str], source: str) -> list[int]:
    """Positions in ``available`` of each model channel, matched by name; a missing one is a ValueError."""
    available = [str(c) for c in available]
    missing = [c for c in model_channels if c not in available]
    if missing:
        raise ValueError(f"{source}: channel(s) {missing} of the model (channels {list(model_channels)}) are not "
                         f"in the input (channels {available}); channels are matched by name")
    return [available.index(c) for c in model_channels]


def index_by_name(index, channels: Sequence[str], whose: str = "model's"):
    """An image index (path / DataFrame / ``phenovec.ingest.index.ImageIndex``) with its channels matched by name
    to ``channels``: ``(ImageIndex, per-site paths in channels order, per-site pages in that order or None)``."""
    from phenovec.ingest.index import ImageIndex, read_image_index

    if isinstance(index, ImageIndex):
        pos = match_channels(channels, index.channels, f"image index {index.source}")
        paths = [tuple(p[i] for i in pos) for p in index.paths]
        frames = [None if index.site_frames(s) is None else tuple(index.site_frames(s)[i] for i in pos)
                  for s in range(len(index))]
        return index, paths, frames
    try:
        idx = read_image_index(index, channels=list(channels))
    except KeyError as e:
        raise ValueError(f"{e.args[0]}; the {whose} channels are {list(channels)} (matched by name to the index's "
                         "FileName_<channel> columns)") from None
    frames = [None if idx.site_frames(s) is None else tuple(idx.site_frames(s)) for s in range(len(idx))]
    return idx, [tuple(p) for p in idx.paths], frames
