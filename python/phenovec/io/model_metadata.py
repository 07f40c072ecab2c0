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
- ``feature_dim``: D of the ``features`` output (N x D); ``outputs``: JSON list, ``["features"]``, optionally
  followed by ``"logits"`` (N x classes) and / or ``"probabilities"`` (N x tasks: the sigmoid of a multi-task
  assay head, inside the graph);
- ``arch``, ``model_config`` (JSON: ``ProfileNet.config``), ``weights_sha256`` (see
  ``phenovec.export.weights_sha256``), ``phenovec_version``, ``torch_version``, ``opset``, ``exporter``;
- optional: ``classes`` (JSON list), ``label_column``; ``tasks`` (JSON list: the assay tasks of a
  ``train.task: assays`` model, in the order of its head's outputs; ``phenovec profile`` names the
  ``probabilities`` columns ``prob_<task>``);
- optional ``input_kind``: ``crops`` (default: single-cell crops around nuclei, N x C x crop_size x crop_size) or
  ``fields`` (whole fields of view, MOAProfiler; ``crop_size`` is then the field side the model takes);
- optional ``feature_layout`` (JSON): absent = one vector per input, features named ``feature_<i>``;
  ``{"kind": "per_channel", "channels": [...], "dim": d}`` = DeepProfiler's pretrained mode, each channel run
  through the network on its own and the C vectors of d concatenated in channel order (features named
  ``feature_<channel>_<i>``).

This module is plain Python (no torch, no onnxruntime) so both stages can use it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

FORMAT = "phenovec-onnx"
FORMAT_VERSION = 1
INPUT_KINDS = ("crops", "fields")
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
    tasks: tuple[str, ...] | None = None
    label_column: str | None = None
    input_kind: str = "crops"
    feature_layout: dict | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {list(INPUT_KINDS)}, got {self.input_kind!r}")
        if "probabilities" in self.outputs and not self.tasks:
            raise ValueError("outputs include 'probabilities' but 'tasks' (the assay names) is missing or empty")
        if self.feature_layout is not None:
            lay = self.feature_layout
            if not isinstance(lay, Mapping) or lay.get("kind") != "per_channel":
                raise ValueError(f"feature_layout must be {{'kind': 'per_channel', 'channels': [...], 'dim': d}}, "
                                 f"got {lay!r}")
            if list(lay.get("channels", [])) != list(self.channels):
                raise ValueError(f"feature_layout channels {lay.get('channels')} != model channels "
                                 f"{list(self.channels)}")
            if int(lay.get("dim", 0)) * len(self.channels) != int(self.feature_dim):
                raise ValueError(f"feature_layout: {len(self.channels)} channels x dim {lay.get('dim')} != "
                                 f"feature_dim {self.feature_dim}")

    def feature_names(self) -> list[str]:
        """Names of the ``features`` columns: ``feature_<i>``, or ``feature_<channel>_<i>`` per channel."""
        if self.feature_layout is None:
            return [f"feature_{i}" for i in range(int(self.feature_dim))]
        d = int(self.feature_layout["dim"])
        return [f"feature_{c}_{i}" for c in self.feature_layout["channels"] for i in range(d)]

    def probability_names(self) -> list[str]:
        """Names of the ``probabilities`` columns: ``prob_<task>`` (empty when the model has no such output)."""
        if "probabilities" not in self.outputs:
            return []
        return [f"prob_{t}" for t in self.tasks]

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
        if self.tasks is not None:
            props["tasks"] = _dumps(list(self.tasks))
        if self.label_column is not None:
            props["label_column"] = str(self.label_column)
        if self.input_kind != "crops":
            props["input_kind"] = self.input_kind
        if self.feature_layout is not None:
            props["feature_layout"] = _dumps(dict(self.feature_layout))
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

        known = set(REQUIRED_KEYS) | {"classes", "tasks", "label_column", "input_kind", "feature_layout"}
        try:
            return cls(
                channels=tuple(parse("channels", json.loads)), crop_size=parse("crop_size", int),
                intensity=parse("intensity", json.loads), feature_dim=parse("feature_dim", int),
                outputs=tuple(parse("outputs", json.loads)), arch=props["arch"],
                model_config=parse("model_config", json.loads), weights_sha256=props["weights_sha256"],
                phenovec_version=props["phenovec_version"], torch_version=props["torch_version"],
                opset=parse("opset", int), exporter=props["exporter"],
                classes=tuple(parse("classes", json.loads)) if "classes" in props else None,
                tasks=tuple(str(t) for t in parse("tasks", json.loads)) if "tasks" in props else None,
                label_column=props.get("label_column"), input_kind=props.get("input_kind", "crops"),
                feature_layout=parse("feature_layout", json.loads) if "feature_layout" in props else None,
                extra={k: v for k, v in props.items() if k not in known},
            )
        except ValueError as e:  # __post_init__'s checks; parse() errors already name the source
            if str(e).startswith(f"{source}: "):
                raise
            raise ValueError(f"{source}: {e}") from None


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
