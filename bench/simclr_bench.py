"""Benchmark SimCLR training throughput against the supervised classifier on the same crops (samples = crops/s).

Input: the synthetic crops folder of ``bench/train_bench.py`` (``make_crops``), made once. Per task (``classify``,
``simclr``) and architecture, in the same run and alternating, ``--repeats`` times:

(a) ``pipeline``: ``phenovec.train.train`` for one epoch with ``train.task`` = the task (Zarr reads, input scaling,
    augmentation: once per crop for classify, twice for SimCLR's two views; forward + backward + step; SimCLR adds
    the projection head and NT-Xent over the 2N views); the rate is the loop's ``cells_per_s`` of the training pass;
(b) ``model_bound``: the objective's ``step`` + backward + optimiser step on one fixed in-memory batch (the trainer's
    augmentation included), as many steps as (a) has batches: what the hardware gives with data loading free.

``simclr_x_of_classify`` = SimCLR's rate / classify's (about 0.5 is expected: each crop is encoded twice).
Medians over ``--repeats``. ``--device cuda`` times on a GPU (mixed precision as the trainer uses it).

    python bench/simclr_bench.py --archs resnet_tiny --box 64 --cells 1200 --repeats 3 --threads 1
"""
from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

from measure import emit_document, log, machine_info
from train_bench import make_crops

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

TASKS = ("classify", "simclr")


def _config(crops: Path, out: Path, task: str, arch: str, batch: int, workers: int, threads: int, device: str):
    return {"data": {"crops": str(crops), "batch_size": batch, "workers": workers, "val_fraction": 0.1},
            "model": {"arch": arch},
            "optim": {"name": "adamw", "lr": 4e-4, "weight_decay": 0.0, "schedule": "constant", "warmup_epochs": 0},
            "train": {"epochs": 1, "out": str(out), "threads": threads, "seed": 0, "task": task, "device": device}}


def pipeline_rate(cfg: dict) -> tuple[float, int]:
    from phenovec.train import train

    res = train(cfg, progress=False)
    row = res.metrics.iloc[-1]
    return float(row["cells_per_s"]), int(row["train_cells"])


def model_bound_rate(cfg: dict, batch: int, box: int, steps: int) -> float:
    """The objective's step (augmentation included) + backward + AdamW step on one fixed batch, crops/s."""
    import torch

    from phenovec.train.config import load_config
    from phenovec.train.loop import _augmenter, _device
    from phenovec.train.models import build_model
    from phenovec.train.objectives import objective_class
    from phenovec.train.schedule import build_optimizer

    cfg = load_config(cfg)
    dev = _device(cfg["train"]["device"])
    amp = dev.type == "cuda"
    torch.set_num_threads(cfg["train"]["threads"])
    torch.manual_seed(0)
    task = cfg["train"]["task"]
    obj = objective_class(task)(cfg)
    x = torch.rand(batch, 5, box, box, device=dev)
    y = (torch.randint(0, 7, (batch,)) if task == "classify" else torch.randint(0, 7, (batch, 2))).to(dev)
    model = build_model(cfg["model"]["arch"], 5, 7 if task == "classify" else 1).to(dev)
    obj.classes = list(range(7))
    obj.setup(model, y.cpu().numpy(), dev)
    extra = obj.extra_modules()
    params = torch.nn.ModuleList([model] + ([extra.to(dev)] if extra is not None else []))
    opt = build_optimizer(params, "adamw", lr=4e-4, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    augment = _augmenter(cfg, 0, 0).to(dev)
    params.train()

    def one():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
            loss, _ = obj.step(model, x, y, augment)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    one()  # warm-up (cuDNN autotune, allocator)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", nargs="+", default=["resnet_tiny"])
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--cells", type=int, default=1200)
    ap.add_argument("--size", type=int, default=384, help="synthetic field side")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on 2 shared cores)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        log(f"making ~{a.cells} crops of {a.box} px")
        crops = make_crops(Path(tmp), a.cells, a.box, a.size)
        for arch in a.archs:
            runs = {t: {"pipeline": [], "model_bound": []} for t in TASKS}
            cells = {}
            for r in range(a.repeats):
                for task in TASKS:  # alternating, so load drifts hit both alike
                    cfg = _config(crops, Path(tmp) / f"run-{arch}-{task}-{r}", task, arch, a.batch, a.workers,
                                  a.threads, a.device)
                    rate, cells[task] = pipeline_rate(cfg)
                    bound = model_bound_rate(cfg, a.batch, a.box, max(1, cells[task] // a.batch))
                    runs[task]["pipeline"].append(rate)
                    runs[task]["model_bound"].append(bound)
                    log(f"{arch} {task} repeat {r + 1}: pipeline {rate:.0f}, model bound {bound:.0f} crops/s")
            for task in TASKS:
                p, b = (statistics.median(runs[task][k]) for k in ("pipeline", "model_bound"))
                results.append({"arch": arch, "task": task, "box": a.box, "batch": a.batch, "device": a.device,
                                "train_cells": cells[task], "pipeline_samples_per_s": p,
                                "model_bound_samples_per_s": b, "runs": runs[task]})
            c, s = results[-2], results[-1]
            s["simclr_x_of_classify"] = {"pipeline": s["pipeline_samples_per_s"] / c["pipeline_samples_per_s"],
                                         "model_bound": s["model_bound_samples_per_s"] / c["model_bound_samples_per_s"]}
    emit_document({"benchmark": "simclr", "date": _dt.datetime.now().isoformat(timespec="seconds"),
                   "machine": machine_info(), "args": vars(a), "results": results}, a.out)


if __name__ == "__main__":
    main()
