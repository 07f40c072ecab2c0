"""Export a whole-field model (MOAProfiler) to ONNX: one embedding per field of view, no segmentation.

MOAProfiler (Doc B, papers digest B2): an EfficientNet-B0 with 5 input channels takes a whole 5 x 1080 x 1080
field scaled to [0, 1] and standardised per channel; its embedding is the last convolutional layer, global
average pooled and flattened (1,280-d) = ``ProfileNet.embed``. The exported graph is ``export_onnx``'s (input
N x C x side x side with side = ``field_size // factor``, dynamic batch, output ``features``), with metadata
``input_kind`` "fields" and the field intensity contract of ``phenovec.profile.fields`` (decode, block-mean
downsample by ``factor``, divide by ``dtype_max``, then ``(x - mean_c) / std_c`` when ``mean`` / ``std`` are
given), which ``phenovec.profile.profile_fields`` applies.

The checkpoint's crop-level contract (per-crop rescale, masking around one cell) is replaced by the field
contract, but a checkpoint trained on illumination-corrected crops (its ``intensity.crop_illumination``) is
refused: the field contract has no illumination step, so the model would see uncorrected fields.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from phenovec.export.onnx_export import ExportReport, export_onnx

RANDOM_PARITY_FIELDS = 2  # whole fields are large: 2 seeded random fields unless the caller passes real ones


def export_field_model(model_or_checkpoint, path: str | os.PathLike, *, channels: Sequence[str] | None,
                       field_size: int, factor: int = 1, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None, dtype_max: float = 65535.0,
                       **export_kwargs) -> ExportReport:
    """Export ``model_or_checkpoint`` (a ``ProfileNet``-like model, a ``phenovec train`` checkpoint path or a
    loaded ``CheckpointContract``; the model must accept any input side, as ProfileNet's global pooling does)
    as a field model taking ``field_size`` x ``field_size`` fields downsampled by ``factor``.

    ``channels``: the model's input channel names in order (required for a bare model; for a checkpoint None
    takes its ``data_config`` channels and a given list must equal them). ``mean`` / ``std``: per-channel
    dataset statistics of the [0, 1]-scaled fields (``phenovec.profile.field_channel_stats``), or None for no
    standardisation. ``export_kwargs`` go to ``export_onnx`` (``opset``, ``logits``, ``exporter``, ``atol``,
    ``parity``, ``parity_crops`` = real fields already scaled, e.g. from
    ``phenovec.profile.fields.read_field_input``; default parity: ``n_random_crops`` = 2 seeded uniform
    [0, 1) fields).
    """
    import torch

    from phenovec.profile.fields import INPUT_KIND, field_intensity

    for key in ("crop_size", "intensity", "input_kind"):
        if key in export_kwargs:
            raise TypeError(f"export_field_model: {key} is set from field_size / factor / dtype_max / mean / std; "
                            "do not pass it")
    export_kwargs.setdefault("n_random_crops", RANDOM_PARITY_FIELDS)
    if isinstance(model_or_checkpoint, torch.nn.Module):
        model = model_or_checkpoint
        if channels is None:
            raise ValueError("export_field_model of a bare model needs channels= (the input channel names in order)")
        channels = [str(c) for c in channels]
    else:
        from phenovec.export.checkpoint import CheckpointContract, load_contract

        ck = (model_or_checkpoint if isinstance(model_or_checkpoint, CheckpointContract)
              else load_contract(model_or_checkpoint))
        if channels is not None and [str(c) for c in channels] != list(ck.channels):
            raise ValueError(f"{ck.path}: channels={list(channels)} differ from the checkpoint's data_config "
                             f"channels {list(ck.channels)} (names and order must match)")
        channels = list(ck.channels)
        if ck.intensity.get("crop_illumination"):
            raise ValueError(f"{ck.path}: the checkpoint was trained on illumination-corrected crops (intensity."
                             "crop_illumination = true, from its crop store's manifest); a field model applies no "
                             "illumination correction, so it would be profiled on uncorrected fields")
    intensity = field_intensity(field_size, factor, dtype_max, mean, std, n_channels=len(channels))
    side = intensity["field_size"] // intensity["factor"]
    if not isinstance(model_or_checkpoint, torch.nn.Module):
        # the checkpoint's crop-level contract is replaced by the field contract; classes / label_column stay;
        # its training crop store holds crops, not fields, so it is no parity input (crops=None)
        model = dataclasses.replace(ck, crop_size=side, intensity=intensity, crops=None)
    return export_onnx(model, path, channels=channels, crop_size=side, intensity=intensity, input_kind=INPUT_KIND,
                       **export_kwargs)
