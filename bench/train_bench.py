"""Benchmark training throughput (cells/s): the whole phenovec training pass against its two bounds, in one run.

Input: a synthetic crops folder (``phenovec.ingest.synth.synth_plate`` + ``phenovec.ingest.crop.crop_index``:
5-channel uint16 crops of ``--box`` px, chunked 256 cells, zstd), made once in a temporary folder. Per
architecture (``--archs``), in the same run:

(a) ``pipeline``: ``phenovec.train.train`` for one epoch (window-shuffled Zarr reads in ``--workers`` DataLoader
    worker processes, per-crop min-max input scaling, the thesis augmentation, forward + backward + SGD step with
    label smoothing); the rate is the loop's own ``cells_per_s`` of the training pass (validation and the
    checkpoint write are not counted);
(b) ``model_bound``: forward + backward + step of the same model on one fixed in-memory batch, repeated as many
    times as (a) has batches: what the hardware gives with data loading free;
(c) ``loader_only``: the epoch's batches read, scaled and augmented, no model: what the data path alone gives.

``pipeline_x_of_model_bound`` = (a) / (b) (1.0 = data loading costs nothing); ``loader_x_model`` = (c) / (b)
(> 1: the loader outruns the model). ``seconds_per_epoch`` is the training pass over the bench's crops
(``train_cells`` / (a)); ``pipeline_x_of_<first arch>`` compares each architecture with the first one listed.

``--task assays`` trains GapNet's objective instead (``train.task: assays``: synthetic MOA-driven assay labels,
``phenovec.ingest.synth_assay_labels``, masked BCE; the model bound uses 209 outputs with half the labels missing).
``--view HxW`` (e.g. ``520x692``, the paper's views) adds (d) ``view_model_bound``: forward + backward + step on
whole views of that size (``--view-batch`` at a time, ``--view-steps`` steps, no data loading), its views/s and the
seconds one epoch of the paper's 198,609 training views would take at that rate (``paper_epoch_s``); the paper
reports 662.04 s for GapNet and 13,208.64 s for ResNet-101 on a GTX 1080 Ti (20x). ``--view-only`` runs (d) alone
(no crops, no pipeline): the paper's comparison without the hours a ResNet-101 crop pipeline takes on 2 cores. DeepProfiler (TensorFlow 2.5) cannot be installed here, so it is not run;
its published rate (the thesis: about 450 cells/s for EfficientNet-B0 at batch 256 on an A100) is quoted in the
output for reference only. Medians over ``--repeats``.

    python bench/train_bench.py --archs resnet_tiny efficientnet_b0 --box 96 --cells 1500 --repeats 3
    python bench/train_bench.py --archs gapnet efficientnet_b0 --task assays --box 96 --cells 300 --repeats 3
    python bench/train_bench.py --archs gapnet resnet101 --task assays --view 520x692 --view-only --repeats 3

``--fields`` benchmarks MOAProfiler's field model instead (``phenovec.train.field_data``): a synthetic plate of
``--field-sites`` sites of ``--size`` px tiled by ``phenovec.ingest.fields.tile_index`` with ``--factor`` (whole
fields block-mean downsampled to ``size / factor`` px), then ``phenovec.train.train`` with ``model.recipe:
moaprofiler`` (well holdout, duplicated minority classes, jitter / rotations / flips, per-field [0, 1] then channel
standardisation) for one epoch per repeat: ``fields_per_s`` (the loop's training-pass rate) and
``seconds_per_epoch`` (its training pass; ``epoch_wall_s`` adds validation and the checkpoint write), and the model
bound (forward + backward + step on one in-memory batch of fields, as (b)), medians.

    python bench/train_bench.py --fields --archs efficientnet_b0 --field-sites 64 --size 512 --factor 4 --repeats 3
"""
from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from measure import emit_document, log, machine_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))


def make_crops(root: Path, cells: int, box: int, size: int) -> Path:
    from phenovec.ingest.crop import crop_index
    from phenovec.ingest.index import read_image_index
    from phenovec.ingest.synth import CHANNELS, synth_plate

    per_site = 40
    sites = max(2, -(-cells // per_site))
    wells = max(7, -(-sites // 2))
    p = synth_plate(root, plates=1, wells=wells, sites_per_well=2, size=size, cells_per_site=(per_site - 4, per_site + 4),
                    cell_radius=box / 5.0, seed=0, progress=False)
    crop_index(read_image_index(p["index"], list(CHANNELS)), p["nuclei"], root / "crops", box_size=box, edge="shift",
               chunk_cells=256, progress=False)
    return root / "crops"


def make_fields(root: Path, sites: int, size: int, factor: int) -> Path:
    """A synthetic plate of ``sites`` sites (two per well, the 7 default treatments) tiled into whole fields."""
    from phenovec.ingest.fields import tile_index
    from phenovec.ingest.index import read_image_index
    from phenovec.ingest.synth import CHANNELS, synth_plate

    wells = max(14, -(-sites // 2))
    p = synth_plate(root, plates=1, wells=wells, sites_per_well=2, size=size, seed=0, progress=False)
    tile_index(read_image_index(p["index"], list(CHANNELS)), root / "fields", factor=factor, chunk_sites=4,
               progress=False)
    return root / "fields"


def field_pipeline(fields: Path, out: Path, arch: str, batch: int, workers: int, threads: int) -> dict:
    """One epoch of the moaprofiler recipe on ``fields``: the loop's fields/s, training-pass and wall seconds."""
    from phenovec.train import train

    cfg = {"data": {"fields": str(fields), "batch_size": batch, "workers": workers, "min_test_plates": 0},
           "model": {"recipe": "moaprofiler", "arch": arch},
           "train": {"epochs": 1, "out": str(out), "threads": threads, "seed": 0, "device": "cpu"}}
    t0 = time.perf_counter()
    res = train(cfg, progress=False)
    wall = time.perf_counter() - t0
    row = res.metrics.iloc[-1]
    return {"fields_per_s": float(row["cells_per_s"]), "train_fields": int(row["train_cells"]),
            "train_seconds": float(row["train_seconds"]), "epoch_wall_s": wall}


def run_fields(a) -> list:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        log(f"making {a.field_sites} fields of {a.size} px, downsampled by {a.factor}")
        fields = make_fields(Path(tmp), a.field_sites, a.size, a.factor)
        for arch in a.archs:
            runs = []
            side = a.size // a.factor
            for r in range(a.repeats):
                runs.append(field_pipeline(fields, Path(tmp) / f"run-{arch}-{r}", arch, a.batch, a.workers,
                                           a.threads))
                runs[-1]["model_bound_fields_per_s"] = model_bound_rate(
                    arch, a.batch, side, max(1, runs[-1]["train_fields"] // a.batch), a.threads)
                log(f"{arch} repeat {r + 1}: {runs[-1]['fields_per_s']:.2f} fields/s, "
                    f"{runs[-1]['train_seconds']:.2f} s per training pass, model bound "
                    f"{runs[-1]['model_bound_fields_per_s']:.2f} fields/s")
            bound = statistics.median(r["model_bound_fields_per_s"] for r in runs)
            results.append({"arch": arch, "mode": "fields", "field_side": a.size // a.factor, "factor": a.factor,
                            "field_size": a.size, "batch": a.batch, "train_fields": runs[0]["train_fields"],
                            "fields_per_s": statistics.median(r["fields_per_s"] for r in runs),
                            "seconds_per_epoch": statistics.median(r["train_seconds"] for r in runs),
                            "epoch_wall_s": statistics.median(r["epoch_wall_s"] for r in runs),
                            "model_bound_fields_per_s": bound,
                            "pipeline_x_of_model_bound": statistics.median(r["fields_per_s"] for r in runs) / bound,
                            "runs": runs})
    return results


#: GapNet's paper: training views per epoch (Doc A, A1) and its outputs (209 assays)
PAPER_TRAIN_VIEWS = 198_609
PAPER_TASKS = 209


def pipeline_rate(crops: Path, out: Path, arch: str, batch: int, workers: int, threads: int,
                  task: str = "classify") -> tuple[float, int]:
    from phenovec.train import train

    cfg = {"data": {"crops": str(crops), "batch_size": batch, "workers": workers, "val_fraction": 0.1},
           "model": {"arch": arch}, "optim": {"warmup_epochs": 0, "schedule": "constant"},
           "train": {"epochs": 1, "out": str(out), "threads": threads, "seed": 0, "task": task}}
    if task == "assays":
        cfg["assays"] = {"labels": str(crops.parent / "assay_labels.csv")}
    res = train(cfg, progress=False)
    row = res.metrics.iloc[-1]
    return float(row["cells_per_s"]), int(row["train_cells"])


def model_bound_rate(arch: str, batch: int, box, steps: int, threads: int, task: str = "classify") -> float:
    """Forward + backward + SGD step on one fixed batch (``box``: a side or an (H, W) pair), samples/s."""
    import torch

    from phenovec.train.masked_bce import masked_bce
    from phenovec.train.models import build_model
    from phenovec.train.schedule import build_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    h, w = (box, box) if isinstance(box, int) else box
    x = torch.rand(batch, 5, h, w)
    if task == "assays":
        model = build_model(arch, 5, PAPER_TASKS)
        y = torch.randint(0, 2, (batch, PAPER_TASKS)).float()
        y[torch.rand(batch, PAPER_TASKS) < 0.5] = float("nan")

        def loss_fn(out, target):
            return masked_bce(out, target)
    else:
        model = build_model(arch, 5, 7)
        y = torch.randint(0, 7, (batch,))
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    opt = build_optimizer(model, "sgd", lr=0.01)
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def loader_rate(crops: Path, batch: int, workers: int) -> float:
    from phenovec.train.augment import Augment
    from phenovec.train.data import epoch_batches, input_scaling, make_loader, open_crops, scale_batch

    cs = open_crops(crops)
    rows = cs.cells["row"].to_numpy()
    y = np.zeros(len(rows), dtype=np.int64)
    plan = epoch_batches(rows, y, cs.chunk_cells, batch, 0, 0)
    aug, rule = Augment(0), input_scaling(cs)
    t0, seen = time.perf_counter(), 0
    for x, _, _ in make_loader(cs, rows, y, plan, workers, 2, 10):
        seen += len(aug(scale_batch(x, rule, 65535.0)))
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", nargs="+", default=["resnet_tiny", "efficientnet_b0"])
    ap.add_argument("--box", type=int, default=96)
    ap.add_argument("--cells", type=int, default=1500)
    ap.add_argument("--size", type=int, default=512, help="synthetic field side")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--task", choices=["classify", "assays"], default="classify",
                    help="what the pipeline trains (assays: GapNet's masked BCE on synthetic assay labels)")
    ap.add_argument("--view", help="HxW: also time the model bound on whole views of this size (e.g. 520x692)")
    ap.add_argument("--view-batch", type=int, default=2)
    ap.add_argument("--view-steps", type=int, default=2)
    ap.add_argument("--view-only", action="store_true", help="time only the whole-view model bound (needs --view)")
    ap.add_argument("--fields", action="store_true", help="benchmark the field model (MOAProfiler) on whole fields")
    ap.add_argument("--field-sites", type=int, default=64, help="--fields: synthetic sites (fields)")
    ap.add_argument("--factor", type=int, default=4, help="--fields: block-mean downsampling of the --size fields")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.fields:
        if a.size % a.factor:
            ap.error(f"--size {a.size} must be divisible by --factor {a.factor}")
        emit(a, run_fields(a))
        return
    view = None
    if a.view:
        try:
            view = tuple(int(v) for v in a.view.lower().split("x"))
            assert len(view) == 2 and min(view) >= 32
        except (ValueError, AssertionError):
            ap.error(f"--view {a.view!r}: expected HxW with both sides >= 32, e.g. 520x692")
    if a.view_only and view is None:
        ap.error("--view-only needs --view HxW")
    results = []
    if a.view_only:
        for arch in a.archs:
            views = []
            for r in range(a.repeats):
                views.append(model_bound_rate(arch, a.view_batch, view, a.view_steps, a.threads, a.task))
                log(f"{arch} repeat {r + 1}: {view[0]}x{view[1]} views {views[-1]:.3f}/s")
            v = statistics.median(views)
            results.append({"arch": arch, "task": a.task, "view": list(view), "view_batch": a.view_batch,
                            "view_model_bound_views_per_s": v, "paper_epoch_s": PAPER_TRAIN_VIEWS / v,
                            "runs": {"view_model_bound": views}})
        for row in results:
            row[f"view_x_of_{results[0]['arch']}"] = (row["view_model_bound_views_per_s"]
                                                      / results[0]["view_model_bound_views_per_s"])
        emit(a, results)
        return

    with tempfile.TemporaryDirectory() as tmp:
        log(f"making ~{a.cells} crops of {a.box} px")
        crops = make_crops(Path(tmp), a.cells, a.box, a.size)
        if a.task == "assays":
            from phenovec.ingest.synth_assay_labels import write_synth_assay_labels

            write_synth_assay_labels(Path(tmp), 8, seed=0)
        for arch in a.archs:
            pipe, bound, load, views = [], [], [], []
            for r in range(a.repeats):
                rate, cells = pipeline_rate(crops, Path(tmp) / f"run-{arch}-{r}", arch, a.batch, a.workers, a.threads,
                                            a.task)
                pipe.append(rate)
                bound.append(model_bound_rate(arch, a.batch, a.box, max(1, cells // a.batch), a.threads, a.task))
                load.append(loader_rate(crops, a.batch, a.workers))
                msg = f"pipeline {rate:.0f}, model bound {bound[-1]:.0f}, loader {load[-1]:.0f} cells/s"
                if view is not None:
                    views.append(model_bound_rate(arch, a.view_batch, view, a.view_steps, a.threads, a.task))
                    msg += f"; {view[0]}x{view[1]} views {views[-1]:.2f}/s"
                log(f"{arch} repeat {r + 1}: {msg}")
            p, b, l = (statistics.median(v) for v in (pipe, bound, load))
            row = {"arch": arch, "task": a.task, "box": a.box, "batch": a.batch, "train_cells": cells,
                   "pipeline_cells_per_s": p, "model_bound_cells_per_s": b, "loader_only_cells_per_s": l,
                   "pipeline_x_of_model_bound": p / b, "loader_x_model": l / b, "seconds_per_epoch": cells / p,
                   "runs": {"pipeline": pipe, "model_bound": bound, "loader_only": load}}
            if view is not None:
                v = statistics.median(views)
                row.update(view=list(view), view_batch=a.view_batch, view_model_bound_views_per_s=v,
                           paper_epoch_s=PAPER_TRAIN_VIEWS / v)
                row["runs"]["view_model_bound"] = views
            results.append(row)
        first = results[0]
        for row in results:
            row[f"pipeline_x_of_{first['arch']}"] = row["pipeline_cells_per_s"] / first["pipeline_cells_per_s"]
            if view is not None:
                row[f"view_x_of_{first['arch']}"] = (row["view_model_bound_views_per_s"]
                                                     / first["view_model_bound_views_per_s"])
    emit(a, results)


def emit(a, results: list) -> None:
    emit_document({"benchmark": "train", "date": _dt.datetime.now().isoformat(timespec="seconds"),
                   "machine": machine_info(), "args": vars(a), "results": results,
                   "reference": {"deepprofiler_thesis_a100_efficientnet_b0_batch256_cells_per_s": 450,
                                 "gapnet_paper_gtx1080ti_s_per_epoch": {"gapnet": 662.04, "resnet101": 13208.64,
                                                                        "densenet121": 8519.91},
                                 "gapnet_paper_train_views": PAPER_TRAIN_VIEWS,
                                 "note": "published, not run here (TensorFlow 2.5 is not installable; no GPU)"}}, a.out)


if __name__ == "__main__":
    main()
