"""The model's input contract, as profiling applies it: channels by name, crop size, crop steps and input scaling.

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

- the crop steps before scaling (``intensity.crop_illumination``: true when training crops were illumination
  corrected; ``intensity.crop_mask``: the mask mode, ``phenovec.ingest.crop.MASK_MODES``; absent = not done):

  * from images the run applies them as ``phenovec crop`` did: each site's plate flat field (the caller's
    illumination source, which must be given exactly when the model was trained on corrected crops:
    :func:`check_index_steps`) and, for a masked model, the site's label image with the model's mask mode (the
    index needs a label column). Refused with an error naming the model file and the key, never profiled
    without the step;
  * from a crop store, its manifest's ``illumination`` (corrected or not) and ``mask`` must be the model's
    (:func:`check_store_steps`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from phenovec.ingest.crop import MASK_MODES

RULES = ("none", "scale", "minmax")
OLD_MODEL_HINT = ("; a model exported before phenovec recorded crop_illumination lacks the key: export it again "
                  "from its checkpoint")


@dataclass(frozen=True)
class InputContract:
    channels: tuple[str, ...]
    box_size: int
    rule: str
    dtype_max: float
    crop_rescale: bool
    crop_intensity: tuple | None
    crop_illumination: bool = False
    crop_mask: str | None = None

    def crop_site_args(self) -> tuple[bool, dict]:
        """(``rescale``, keyword options) for ``_core.crop_site`` that cut crops as training stored them; the
        per-site options (``frames``, the plate's ``flat`` field, the ``labels`` image and ``label_ids`` of a
        masked model) come from the site."""
        opts: dict = {}
        if self.crop_intensity is not None:
            opts["intensity"] = self.crop_intensity
        if self.crop_mask is not None:
            opts["mask"] = self.crop_mask
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
    illum = inten.get("crop_illumination")
    if illum not in (None, False, True):
        raise ValueError(f"{source}: metadata intensity.crop_illumination = {illum!r}; expected true, false or "
                         "absent")
    mask = inten.get("crop_mask")
    if mask is not None and mask not in MASK_MODES:
        raise ValueError(f"{source}: metadata intensity.crop_mask = {mask!r}; expected one of {list(MASK_MODES)} "
                         "or absent")
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
                         crop_intensity=ci, crop_illumination=bool(illum), crop_mask=mask)


def check_index_steps(contract: InputContract, model: str, illumination, index) -> None:
    """Refuse to profile the images of ``index`` (an ``ImageIndex``) with ``illumination`` (a flat-field source or
    None) unless the run can apply the crop steps the model was trained with (module docstring); errors name the
    model file and the metadata key."""
    if contract.crop_illumination and illumination is None:
        raise ValueError(f"{model}: the model was trained on illumination-corrected crops (metadata "
                         "intensity.crop_illumination = true); give the flat fields of the profiled plates "
                         "(illumination=, `phenovec profile --illumination DIR`: a `phenovec illum` folder)")
    if not contract.crop_illumination and illumination is not None:
        raise ValueError(f"{model}: the model was trained on crops without illumination correction (metadata "
                         "intensity.crop_illumination absent or false), so illumination= would feed it images "
                         "it never saw; leave it out" + OLD_MODEL_HINT)
    if contract.crop_mask is not None and index.labels is None:
        raise ValueError(f"{model}: the model was trained on masked crops (metadata intensity.crop_mask = "
                         f"{contract.crop_mask!r}) but the image index {index.source} has no label images: give it "
                         "a label column (FileName_Labels, or read_image_index(labels=))")


def check_store_steps(contract: InputContract, model: str, store, cfg: dict) -> None:
    """Refuse a crop store (manifest config ``cfg``) whose illumination correction or mask is not the model's."""
    corrected = cfg.get("illumination") is not None
    if corrected != contract.crop_illumination:
        source = cfg.get("illumination")
        made = ("without illumination correction" if not corrected else "with illumination correction ("
                + (f"{len(source)} flat-field files" if isinstance(source, dict) else f"flat fields of {source}") + ")")
        trained = "with" if contract.crop_illumination else "without"
        raise ValueError(f"crop store {store}: crops made {made} but the model {model} was trained on crops "
                         f"{trained} it (metadata intensity.crop_illumination = "
                         f"{str(contract.crop_illumination).lower()})" + (OLD_MODEL_HINT if corrected else ""))
    if cfg.get("mask") != contract.crop_mask:
        raise ValueError(f"crop store {store}: crops made with mask={cfg.get('mask')!r} but the model {model} was "
                         f"trained on crop_mask={contract.crop_mask!r} (metadata intensity.crop_mask)")


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
