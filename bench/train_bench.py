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
(> 1: the loader outruns the model). DeepProfiler (TensorFlow 2.5) cannot be installed here, so it is not run;
its published rate (the thesis: about 450 cells/s for EfficientNet-B0 at batch 256 on an A100) is quoted in the
output for reference only. Medians over ``--repeats``.

    python bench/train_bench.py --archs resnet_tiny efficientnet_b0 --box 96 --cells 1500 --repeats 3
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


def pipeline_rate(crops: Path, out: Path, arch: str, batch: int, workers: int, threads: int) -> tuple[float, int]:
    from phenovec.train import train

    res = train({"data": {"crops": str(crops), "batch_size": batch, "workers": workers, "val_fraction": 0.1},
                 "model": {"arch": arch}, "optim": {"warmup_epochs": 0, "schedule": "constant"},
                 "train": {"epochs": 1, "out": str(out), "threads": threads, "seed": 0}}, progress=False)
    row = res.metrics.iloc[-1]
    return float(row["cells_per_s"]), int(row["train_cells"])


def model_bound_rate(arch: str, batch: int, box: int, steps: int, threads: int) -> float:
    import torch

    from phenovec.train.models import build_model
    from phenovec.train.schedule import build_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(arch, 5, 7)
    opt = build_optimizer(model, "sgd", lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    x, y = torch.rand(batch, 5, box, box), torch.randint(0, 7, (batch,))
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
    ap.add_argument("--out")
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        log(f"making ~{a.cells} crops of {a.box} px")
        crops = make_crops(Path(tmp), a.cells, a.box, a.size)
        for arch in a.archs:
            pipe, bound, load = [], [], []
            for r in range(a.repeats):
                rate, cells = pipeline_rate(crops, Path(tmp) / f"run-{arch}-{r}", arch, a.batch, a.workers, a.threads)
                pipe.append(rate)
                bound.append(model_bound_rate(arch, a.batch, a.box, max(1, cells // a.batch), a.threads))
                load.append(loader_rate(crops, a.batch, a.workers))
                log(f"{arch} repeat {r + 1}: pipeline {rate:.0f}, model bound {bound[-1]:.0f}, loader {load[-1]:.0f} cells/s")
            p, b, l = (statistics.median(v) for v in (pipe, bound, load))
            results.append({"arch": arch, "box": a.box, "batch": a.batch, "train_cells": cells,
                            "pipeline_cells_per_s": p, "model_bound_cells_per_s": b, "loader_only_cells_per_s": l,
                            "pipeline_x_of_model_bound": p / b, "loader_x_model": l / b,
                            "runs": {"pipeline": pipe, "model_bound": bound, "loader_only": load}})
    emit_document({"benchmark": "train", "date": _dt.datetime.now().isoformat(timespec="seconds"),
                   "machine": machine_info(), "args": vars(a), "results": results,
                   "reference": {"deepprofiler_thesis_a100_efficientnet_b0_batch256_cells_per_s": 450,
                                 "note": "published, not run here (TensorFlow 2.5 is not installable)"}}, a.out)


if __name__ == "__main__":
    main()
