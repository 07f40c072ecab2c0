"""Export a whole-field model (MOAProfiler) to ONNX: one embedding per field of view, no segmentation.

MOAProfiler (Doc B, papers digest B2): an EfficientNet-B0 with 5 input channels takes a whole 5 x 1080 x 1080
field scaled to [0, 1] and standardised per channel; its embedding is the last convolutional layer, global
average pooled and flattened (1,280-d) = ``ProfileNet.embed``. The exported graph is ``export_onnx``'s (input
N x C x side x side with side = ``field_size // factor``, dynamic batch, output ``features``), with metadata
``input_kind`` "fields" and the field intensity contract of ``phenovec.profile.fields`` (decode, block-mean
downsample by ``factor``, divide by ``dtype_max``, then ``(x - mean_c) / std_c`` when ``mean`` / ``std`` are
given), which ``phenovec.profile.profile_fields`` applies.

A checkpoint must have been trained on fields (``phenovec train`` with ``data.fields``,
``phenovec.train.field_data``): its ``data_config`` records the training normalisation (per-field, per-channel
min-max to [0, 1], ``"per_image": "minmax"``, then the training fields' channel statistics; ``"trained_on":
"fields"``), which becomes the model's metadata unchanged. A checkpoint trained on crops has another
normalisation (per crop, around one cell) and is refused with a message naming it, as is one trained on
illumination-corrected crops or tiles: the field contract has no illumination step. A bare model (Python only)
takes the contract from the arguments. Parity (ONNX vs PyTorch) runs on the caller's fields, else on the first
fields of a field checkpoint's training store while it exists (scaled as profiling scales them), else on seeded
random fields.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from phenovec.export.onnx_export import ExportReport, export_onnx

RANDOM_PARITY_FIELDS = 2  # whole fields are large: 2 seeded random fields unless the caller passes real ones


def export_field_model(model_or_checkpoint, path: str | os.PathLike, *, channels: Sequence[str] | None,
                       field_size: int | None = None, factor: int | None = None, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None, dtype_max: float | None = None,
                       **export_kwargs) -> ExportReport:
    """Export ``model_or_checkpoint`` (a ``ProfileNet``-like model, a ``phenovec train`` checkpoint path or a
    loaded ``CheckpointContract``; the model must accept any input side, as ProfileNet's global pooling does)
    as a field model taking ``field_size`` x ``field_size`` fields downsampled by ``factor``.

    A checkpoint must have been trained on fields (``phenovec train`` with ``data.fields``: its ``data_config``
    intensity is the field contract, ``trained_on: fields``); its contract (field size, factor, per-field [0, 1]
    scaling, the training fields' channel statistics) is exported as it is, and a given ``field_size`` /
    ``factor`` / ``mean`` / ``std`` / ``dtype_max`` that differs from it is an error, as is a checkpoint trained
    on crops (another normalisation: refused, never silently replaced) or on a field store whose tiles were
    illumination-corrected or intensity-rescaled (profiling decodes raw fields). A field checkpoint that records
    no statistics takes ``mean`` / ``std`` (e.g. ``phenovec.profile.field_channel_stats``).

    A bare model takes the contract from the arguments (``field_size`` required, ``factor`` default 1,
    ``dtype_max`` default 65,535, ``mean`` / ``std`` or None for no standardisation).

    ``channels``: the model's input channel names in order (required for a bare model; for a checkpoint None
    takes its ``data_config`` channels and a given list must equal them). ``export_kwargs`` go to
    ``export_onnx`` (``opset``, ``logits``, ``exporter``, ``atol``, ``parity``, ``parity_crops`` = real fields
    already scaled, e.g. from ``phenovec.profile.fields.read_field_input``; default parity: ``n_random_crops`` =
    2 seeded uniform [0, 1) fields, or for a field checkpoint whose training store still exists its first 2
    fields, scaled as profiling scales them). ``logits=True`` adds the classifier's logits, from which ``phenovec profile``
    writes each field's class probabilities.
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
        if field_size is None:
            raise ValueError("export_field_model of a bare model needs field_size= (the fields' side in pixels)")
        channels = [str(c) for c in channels]
        intensity = field_intensity(field_size, 1 if factor is None else factor,
                                    65535.0 if dtype_max is None else dtype_max, mean, std, n_channels=len(channels))
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
        intensity = checkpoint_field_intensity(ck, len(channels), field_size=field_size, factor=factor, mean=mean,
                                               std=std, dtype_max=dtype_max)
    side = intensity["field_size"] // intensity["factor"]
    if not isinstance(model_or_checkpoint, torch.nn.Module) and export_kwargs.get("parity", True) \
            and export_kwargs.get("parity_crops") is None:
        fields = training_fields(ck.path, intensity, RANDOM_PARITY_FIELDS)
        if fields is not None:  # the first fields of the training store, scaled as profiling scales them
            export_kwargs["parity_crops"] = fields
    if not isinstance(model_or_checkpoint, torch.nn.Module):
        # the export's crop size is the field side; classes / label_column stay; a checkpoint's training store is
        # no parity input for export_onnx's crop reader (crops=None): parity runs on the caller's or random fields
        model = dataclasses.replace(ck, crop_size=side, intensity=intensity, crops=None)
    return export_onnx(model, path, channels=channels, crop_size=side, intensity=intensity, input_kind=INPUT_KIND,
                       **export_kwargs)


def checkpoint_field_intensity(ck, n_channels: int, **given) -> dict:
    """The field contract of a field-trained checkpoint (``ck``: a ``CheckpointContract``), checked against the
    caller's ``given`` values (``field_size``, ``factor``, ``mean``, ``std``, ``dtype_max``; None = the
    checkpoint's); a crop-trained checkpoint is a ValueError naming the file and both normalisations."""
    from phenovec.profile.fields import INPUT_KIND, INPUT_SCALING, field_intensity

    inten = dict(ck.intensity)
    if inten.get("trained_on") != INPUT_KIND or inten.get("input_scaling") != INPUT_SCALING:
        raise ValueError(
            f"{ck.path}: the checkpoint was trained on crops (its input normalisation is "
            f"input_scaling = {inten.get('input_scaling')!r}, per crop), not on whole fields; a field model "
            "profiles fields with the normalisation it was trained with (per-field [0, 1] scaling and the training "
            "fields' channel statistics), so train it on fields (`phenovec train` with data.fields: a `phenovec "
            "tiles` folder) and export that checkpoint")
    steps = _tile_steps(ck.path)
    if steps:
        raise ValueError(f"{ck.path}: the checkpoint was trained on a field store made with {' and '.join(steps)} "
                         "(`phenovec tiles`); field profiling decodes raw fields without these steps, so the model "
                         "would see other input than in training (tile without them to train a field model)")
    for key in ("field_size", "factor", "dtype_max"):
        if given.get(key) is not None and float(given[key]) != float(inten[key]):
            raise ValueError(f"{ck.path}: {key}={given[key]!r} differs from the checkpoint's training fields "
                             f"({key} = {inten[key]!r}); leave it out to export the training contract")
    mean, std = inten.get("mean"), inten.get("std")
    if mean is not None:
        for key, got, ref in (("mean", given.get("mean"), mean), ("std", given.get("std"), std)):
            if got is not None and [float(v) for v in got] != [float(v) for v in ref]:
                raise ValueError(f"{ck.path}: {key}= differs from the channel statistics the model was trained with "
                                 f"({ref}); leave it out (the checkpoint's are exported)")
    else:
        mean, std = given.get("mean"), given.get("std")
    return field_intensity(inten["field_size"], inten["factor"], inten["dtype_max"], mean, std,
                           n_channels=n_channels, per_image=inten.get("per_image"), trained_on=INPUT_KIND)


def _data_config(path) -> dict:
    from phenovec.train.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path).get("data_config") or {}
    except (OSError, ValueError):
        return {}


def training_fields(path, intensity: dict, n: int):
    """The first ``n`` fields of a field checkpoint's training store (``data_config["fields"]``) as float32 model
    input (``phenovec.profile.fields.scale_fields``: the scaling profiling applies), or None when the checkpoint
    records no store or it is gone."""
    import zarr

    from phenovec.profile.fields import scale_fields

    store = _data_config(path).get("fields")
    if store is None or not os.path.exists(os.path.join(store, "tiles.zarr")):
        return None
    tiles = zarr.open_array(os.path.join(store, "tiles.zarr"), mode="r")
    side = intensity["field_size"] // intensity["factor"]
    if tuple(tiles.shape[2:]) != (side, side):
        return None
    return scale_fields(np.asarray(tiles[:n]), intensity)


def _tile_steps(path) -> list[str]:
    """The tiling steps (illumination correction, intensity rescale) of a field checkpoint's training store, from
    its ``data_config["field_config"]`` (empty when the file records none)."""
    cfg = _data_config(path).get("field_config") or {}
    steps = []
    if cfg.get("illumination") is not None:
        steps.append("illumination correction")
    if cfg.get("intensity") is not None:
        steps.append(f"intensity rescale {cfg['intensity']}")
    return steps
