"""``phenovec export``: a training checkpoint to ONNX, verified against PyTorch; prints a JSON report.

    phenovec export CHECKPOINT -o model.onnx [--logits] [--[no-]probabilities] [--opset 18] \
        [--parity-crops OUT/crops.zarr]

``--probabilities`` (default for a ``train.task: assays`` checkpoint): the graph also outputs the sigmoid of the
assay head, which ``phenovec profile`` writes beside the features (``prob_<task>``).
    phenovec export --pretrained efficientnet_b0 --weights imagenet.pth --channels DNA ER RNA AGP Mito \
        --crop-size 128 [--input-size 224] -o model.onnx

``--pretrained ARCH``: DeepProfiler's pretrained mode (``phenovec.export.pretrained``): each channel as grey -> RGB
through the ImageNet-style ``ARCH`` with the user's torchvision ``state_dict`` (``--weights``), C x D features;
crops scaled by per-crop per-channel min-max (DeepProfiler's rule).

``--fields``: a whole-field model (MOAProfiler; ``phenovec.export.field_model``) from a checkpoint trained on
fields (``phenovec train`` with ``data.fields``): its network with the normalisation it was trained with (field
size, downsampling factor, per-field [0, 1] scaling, the training fields' channel statistics), recorded in the
metadata; ``--logits`` adds the classifier's logits (``phenovec profile`` then writes each field's class
probabilities). A checkpoint trained on crops is refused (another normalisation), as are ``--field-size`` /
``--factor`` values other than the checkpoint's. ``--field-stats INDEX`` (``--stats-sites`` first sites) only
serves a field checkpoint that records no statistics. Profile it with ``phenovec profile MODEL --index INDEX``.

    phenovec export CHECKPOINT --fields [--logits] -o field.onnx

``--parity-crops``: a crops store written by ``phenovec crop`` (the folder or its ``crops.zarr``); its first
``--parity-n`` crops are scaled with the checkpoint's ``input_scaling`` rule (``phenovec.train.data.scale_batch``,
the rule training used) and compared. Without it a checkpoint is compared on the first ``--parity-n`` crops of the
store it was trained on (its ``data_config["crops"]``) while that store exists, else (with a warning) on seeded
uniform [0, 1) crops; the printed JSON's ``parity_source`` says which: the store's path or ``"random"``.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from phenovec.cli_options import add_out, add_quiet, show_progress


def _pretrained_export(a):
    from types import SimpleNamespace

    from phenovec.export.parity import load_parity_crops
    from phenovec.export.pretrained import DEFAULT_INTENSITY, export_pretrained

    for flag, value in (("--channels", a.channels), ("--crop-size", a.crop_size)):
        if value is None:
            raise SystemExit(f"phenovec export --pretrained: {flag} is required")
    if a.logits or a.probabilities:
        raise SystemExit("phenovec export --pretrained: the pretrained mode has no classifier (drop --logits / "
                         "--probabilities)")
    if a.weights is None:
        print("phenovec export --pretrained: no --weights file: the network is randomly initialised",
              file=sys.stderr)
    contract = SimpleNamespace(channels=list(a.channels), crop_size=int(a.crop_size), intensity=DEFAULT_INTENSITY)
    crops = load_parity_crops(a.parity_crops, contract, a.parity_n) if a.parity_crops else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the random-init warning, said above
        return export_pretrained(a.pretrained, a.out, channels=a.channels, crop_size=a.crop_size, weights=a.weights,
                                 input_size=a.input_size, normalize=None if a.no_imagenet_normalize else "imagenet",
                                 opset=a.opset, exporter=a.exporter, parity_crops=crops, atol=a.atol)


def _field_export(a):
    from phenovec.export.checkpoint import load_contract
    from phenovec.export.field_model import checkpoint_field_intensity, export_field_model

    if a.parity_crops or a.probabilities:
        raise SystemExit("phenovec export --fields: --probabilities and --parity-crops are for crop models (--logits "
                         "adds the field classifier's logits: phenovec profile writes its class probabilities)")
    try:
        contract = load_contract(a.checkpoint)
        # a crop-trained checkpoint is refused here, before any statistics are computed
        inten = checkpoint_field_intensity(contract, len(contract.channels), field_size=a.field_size,
                                           factor=a.factor)
    except ValueError as e:
        raise SystemExit(f"phenovec export --fields: {e}") from None
    mean = std = None
    if a.field_stats:
        if inten.get("mean") is not None or inten.get("per_image") is not None:
            raise SystemExit(f"phenovec export --fields: --field-stats: {a.checkpoint} records the normalisation it "
                             "was trained with (per-field [0, 1] scaling and its training fields' channel "
                             "statistics); leave --field-stats out")
        from phenovec.profile.fields import field_channel_stats

        mean, std = field_channel_stats(a.field_stats, contract.channels, factor=inten["factor"],
                                        dtype_max=inten["dtype_max"], max_sites=a.stats_sites,
                                        progress=show_progress(a))
    return export_field_model(contract, a.out, channels=contract.channels, field_size=a.field_size, factor=a.factor,
                              mean=mean, std=std, logits=a.logits, opset=a.opset, exporter=a.exporter, atol=a.atol)


def _table_checkpoint(path):
    """The checkpoint dict when ``path`` is a profile-table run's (``phenovec.train.tables``), else None."""
    from phenovec.train.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    return ck if "cp_standardization" in (ck.get("data_config") or {}) else None


def _table_export(a, ck) -> dict:
    """A profile-table model (clip / bae / simclr_profiles / fnn) to ONNX, standardisation inside the graph."""
    from phenovec.train.tables.export import export_table_model

    for flag, value in (("--fields", a.fields), ("--logits", a.logits), ("--probabilities", a.probabilities),
                        ("--parity-crops", a.parity_crops)):
        if value:
            raise SystemExit(f"phenovec export: {flag} is for crop models; {a.checkpoint} is a profile-table run")
    rep = export_table_model(ck, a.out, opset=a.opset, exporter=a.exporter, atol=a.atol)
    summary = {**rep.to_dict(), "checkpoint": str(a.checkpoint), "input_kind": "profiles"}
    print(json.dumps(summary, indent=2, default=str))
    return summary


def _run_export(a) -> dict:
    from phenovec.export.checkpoint import load_contract
    from phenovec.export.onnx_export import export_onnx
    from phenovec.export.parity import load_parity_crops

    if (a.checkpoint is None) == (a.pretrained is None):
        raise SystemExit("phenovec export: give a CHECKPOINT or --pretrained ARCH (not both)")
    if a.pretrained is not None:
        if a.fields:
            raise SystemExit("phenovec export: --fields takes a CHECKPOINT, not --pretrained")
        rep = _pretrained_export(a)
    elif a.fields:
        rep = _field_export(a)
    else:
        for flag, value in (("--field-size", a.field_size), ("--field-stats", a.field_stats), ("--factor", a.factor)):
            if value is not None:
                raise SystemExit(f"phenovec export: {flag} is for --fields")
        for flag, value in (("--weights", a.weights), ("--channels", a.channels), ("--crop-size", a.crop_size),
                            ("--input-size", a.input_size)):
            if value is not None:
                raise SystemExit(f"phenovec export: {flag} is for --pretrained (a checkpoint carries its own)")
        table = _table_checkpoint(a.checkpoint)
        if table is not None:
            return _table_export(a, table)
        contract = load_contract(a.checkpoint)
        if contract.intensity.get("trained_on") == "fields":
            raise SystemExit(f"phenovec export: {a.checkpoint} was trained on whole fields (data.fields); export it "
                             "with --fields")
        crops = load_parity_crops(a.parity_crops, contract, a.parity_n) if a.parity_crops else None
        rep = export_onnx(contract, a.out, opset=a.opset, logits=a.logits, probabilities=a.probabilities,
                          exporter=a.exporter, parity_crops=crops, n_store_crops=a.parity_n, atol=a.atol)
    summary = {"path": rep.path, "opset": rep.opset, "exporter": rep.exporter, "feature_dim": rep.feature_dim,
               "outputs": rep.outputs, "channels": rep.channels, "crop_size": rep.crop_size,
               "intensity": rep.intensity, "max_abs_diff": rep.max_abs_diff,
               "reference_max_abs": rep.parity.reference_max_abs if rep.parity else None,
               "parity_crops": rep.parity_crops,
               "parity_source": str(a.parity_crops) if a.parity_crops else rep.parity_source,
               "parity_n": rep.parity.n_crops if rep.parity else 0, "atol": a.atol,
               "weights_sha256": rep.weights_sha256, "size_bytes": rep.size_bytes,
               "checkpoint": None if a.checkpoint is None else str(a.checkpoint), "pretrained": a.pretrained,
               "feature_layout": rep.metadata.get("feature_layout"),
               "input_kind": rep.metadata.get("input_kind", "crops")}
    print(json.dumps(summary, indent=2))
    return summary


def add_export_parser(stages) -> argparse.ArgumentParser:
    """Add ``export`` (checkpoint -> ONNX with embedded data contract and a parity check) to the CLI."""
    p = stages.add_parser("export", help="export a training checkpoint to ONNX (features, optional logits), "
                                         "parity-checked against PyTorch")
    p.add_argument("checkpoint", nargs="?", help="training checkpoint (.pt) written by phenovec train")
    p.add_argument("--pretrained", metavar="ARCH", help="DeepProfiler's pretrained mode with this torchvision "
                                                        "architecture (efficientnet_b0, resnet50, ...) instead")
    p.add_argument("--weights", help="--pretrained: the architecture's RGB torchvision state_dict file (ImageNet)")
    p.add_argument("--channels", nargs="+", help="--pretrained: channel names in input order")
    p.add_argument("--crop-size", type=int, help="--pretrained: crop side in pixels")
    p.add_argument("--input-size", type=int, help="--pretrained: resize crops to this side first")
    p.add_argument("--fields", action="store_true", help="export CHECKPOINT as a whole-field model (MOAProfiler)")
    p.add_argument("--field-size", type=int, help="--fields: field side in pixels (default: the checkpoint's "
                                                   "training fields; a different value is refused)")
    p.add_argument("--factor", type=int, default=None, help="--fields: block-mean downsampling factor (default: "
                                                            "the checkpoint's)")
    p.add_argument("--field-stats", metavar="INDEX", help="--fields: standardise with per-channel statistics of "
                                                         "this image index's fields (only for a checkpoint that "
                                                         "records no training statistics)")
    p.add_argument("--stats-sites", type=int, default=None, help="--fields: use the first N sites for statistics (default: all)")
    p.add_argument("--no-imagenet-normalize", action="store_true",
                   help="--pretrained: feed [0, 1] grey->RGB without ImageNet mean/SD standardisation")
    add_out(p, "output ONNX file (written atomically)")
    p.add_argument("--logits", action="store_true", help="also output the classifier logits")
    p.add_argument("--probabilities", action=argparse.BooleanOptionalAction, default=None,
                   help="also output the assay probabilities (sigmoid of the head, named by the checkpoint's tasks; "
                        "phenovec profile writes them as prob_<task>); default: on for a train.task: assays "
                        "checkpoint")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17; 17 uses the TorchScript exporter)")
    p.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default="auto",
                   help="torch.onnx exporter (auto: dynamo for opset >= 18, else TorchScript)")
    p.add_argument("--parity-crops", help="crops store (phenovec crop output folder or its crops.zarr) for parity "
                                          "(default: the checkpoint's training store while it exists, else random)")
    p.add_argument("--parity-n", type=int, default=32, help="number of crops for the parity check")
    p.add_argument("--atol", type=float, default=1e-4, help="largest allowed ONNX vs PyTorch difference")
    add_quiet(p)
    p.set_defaults(run=_run_export)
    return p
