"""The metadata a phenovec ONNX model carries (ONNX ``metadata_props``), and its validation.

``phenovec.export`` writes it, ``phenovec.runtime`` reads it back, so profiling can never feed a model crops with
another channel order, crop size or intensity scaling than it was trained on. Every value is a string (ONNX
``StringStringEntryProto``); lists and dicts are JSON with sorted keys.

Keys (all required in a phenovec model; ``format`` = ``phenovec-onnx``, ``format_version`` = ``1``):

- ``channels``: JSON list of channel names in input order, e.g. ``["DNA", "ER", "RNA", "AGP", "Mito"]``;
- ``crop_size``: square crop side in pixels (input is N x len(channels) x crop_size x crop_size float32);
- ``intensity``: JSON dict describing how crops were scaled before the model (the training checkpoint's
  ``data_config["intensity"]``, e.g. ``{"crop_rescale": "minmax"}`` = DeepProfiler's per-crop per-channel
  min-max to [0, 1]); the runtime does not apply it, it only checks that the caller's scaling is the same;
- ``feature_dim``: D of the ``features`` output (N x D); ``outputs``: JSON list, ``["features"]`` or
  ``["features", "logits"]``;
- ``arch``, ``model_config`` (JSON: ``ProfileNet.config``), ``weights_sha256`` (see
  ``phenovec.export.weights_sha256``), ``phenovec_version``, ``torch_version``, ``opset``, ``exporter``;
- optional: ``classes`` (JSON list), ``label_column``.

This module is plain Python (no torch, no onnxruntime) so both stages can use it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

FORMAT = "phenovec-onnx"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "channels", "crop_size", "intensity", "feature_dim", "outputs", "arch",
                 "model_config", "weights_sha256", "phenovec_version", "torch_version", "opset", "exporter")


def _dumps(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def normalise_intensity(intensity: Mapping[str, Any] | None) -> dict:
    """The intensity description as a plain JSON-comparable dict (round-tripped through JSON)."""
    if intensity is None:
        raise ValueError("intensity normalisation is required (e.g. {'crop_rescale': 'minmax'}), got None")
    if not isinstance(intensity, Mapping):
        raise ValueError(f"intensity must be a dict describing the crop scaling, got {type(intensity).__name__}")
    return json.loads(_dumps(dict(intensity)))


@dataclass(frozen=True)
class ModelMetadata:
    channels: tuple[str, ...]
    crop_size: int
    intensity: dict
    feature_dim: int
    outputs: tuple[str, ...]
    arch: str
    model_config: dict
    weights_sha256: str
    phenovec_version: str
    torch_version: str
    opset: int
    exporter: str
    classes: tuple[str, ...] | None = None
    label_column: str | None = None
    extra: dict = field(default_factory=dict)

    def to_props(self) -> dict[str, str]:
        props = {
            "format": FORMAT, "format_version": str(FORMAT_VERSION), "channels": _dumps(list(self.channels)),
            "crop_size": str(int(self.crop_size)), "intensity": _dumps(self.intensity),
            "feature_dim": str(int(self.feature_dim)), "outputs": _dumps(list(self.outputs)), "arch": str(self.arch),
            "model_config": _dumps(self.model_config), "weights_sha256": self.weights_sha256,
            "phenovec_version": self.phenovec_version, "torch_version": self.torch_version,
            "opset": str(int(self.opset)), "exporter": self.exporter,
        }
        if self.classes is not None:
            props["classes"] = _dumps(list(self.classes))
        if self.label_column is not None:
            props["label_column"] = str(self.label_column)
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> "ModelMetadata":
        """Parse ``metadata_props``; a missing or malformed key is an error naming the key and ``source``."""
        if props.get("format") != FORMAT:
            raise ValueError(f"{source}: not a phenovec ONNX export (metadata 'format' is {props.get('format')!r}, "
                             f"expected {FORMAT!r}); export it with `phenovec export`")
        missing = [k for k in REQUIRED_KEYS if k not in props]
        if missing:
            raise ValueError(f"{source}: phenovec ONNX metadata lacks key(s) {missing}")
        if int(props["format_version"]) > FORMAT_VERSION:
            raise ValueError(f"{source}: metadata format_version {props['format_version']} is newer than this "
                             f"phenovec reads ({FORMAT_VERSION})")

        def parse(key, fn):
            try:
                return fn(props[key])
            except (ValueError, TypeError) as e:
                raise ValueError(f"{source}: metadata key {key!r} is malformed ({props[key]!r}): {e}") from None

        known = set(REQUIRED_KEYS) | {"classes", "label_column"}
        return cls(
            channels=tuple(parse("channels", json.loads)), crop_size=parse("crop_size", int),
            intensity=parse("intensity", json.loads), feature_dim=parse("feature_dim", int),
            outputs=tuple(parse("outputs", json.loads)), arch=props["arch"],
            model_config=parse("model_config", json.loads), weights_sha256=props["weights_sha256"],
            phenovec_version=props["phenovec_version"], torch_version=props["torch_version"],
            opset=parse("opset", int), exporter=props["exporter"],
            classes=tuple(parse("classes", json.loads)) if "classes" in props else None,
            label_column=props.get("label_column"),
            extra={k: v for k, v in props.items() if k not in known},
        )


def check_matches(meta: ModelMetadata, *, channels: Sequence[str] | None = None, crop_size: int | None = None,
                  intensity: Mapping[str, Any] | None = None, source: str = "model") -> None:
    """Raise ``ValueError`` naming every field where the caller's data differs from what the model expects.

    Channels are compared by name and order (a reordering is a mismatch); ``None`` skips a field.
    """
    problems = []
    if channels is not None and tuple(channels) != meta.channels:
        problems.append(f"channels {list(channels)} != model's {list(meta.channels)}")
    if crop_size is not None and int(crop_size) != meta.crop_size:
        problems.append(f"crop_size {int(crop_size)} != model's {meta.crop_size}")
    if intensity is not None and normalise_intensity(intensity) != meta.intensity:
        problems.append(f"intensity {normalise_intensity(intensity)} != model's {meta.intensity}")
    if problems:
        raise ValueError(f"{source}: input does not match the model: " + "; ".join(problems))
