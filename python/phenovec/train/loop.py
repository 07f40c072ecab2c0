"""The training loop: weakly supervised single-cell classification (the DeepProfiler / thesis recipe), resumable.

``train(config)`` trains a ``ProfileNet`` to predict ``data.label`` (treatment by default) from single-cell crops;
the profile is the pooled penultimate layer (``ProfileNet.embed``). Per epoch it runs the epoch plan of
``phenovec.train.data`` through augmentation (``phenovec.train.augment``), the loss (cross-entropy with label
smoothing, optionally class-weighted) and the optimiser / per-iteration schedule (``phenovec.train.schedule``),
then evaluates on the validation split, appends a row to ``metrics.csv`` / ``metrics.json`` and writes
``last.pt`` (and ``best.pt`` when validation accuracy improved) atomically.

**Exact resume**: every random choice of an epoch (data plan, augmentation, dropout) is seeded from
(seed, epoch), and the checkpoint holds model, optimiser, schedule and grad-scaler state. A run killed at any
point restarts from the last completed epoch and, on the CPU, finishes with the same weights bit for bit as an
uninterrupted run (tested with a real ``kill -9``). A rerun with a changed configuration is refused (the
checkpoint stores the configuration's hash); a finished run is not retrained.

Mixed precision (fp16 autocast + GradScaler) is used on CUDA when ``train.amp`` is ``auto`` or true.

**Fields**: with ``data.fields`` (a ``phenovec tiles`` folder) the same loop trains MOAProfiler's field classifier:
the field table stands in for the cell table and the input rule is the field one (``phenovec.train.inputs``,
``phenovec.train.field_data``). **Data parallel**: under ``torchrun`` every process trains a slice of each batch
and rank 0 writes the run folder, with one process's results (``phenovec.train.distributed``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from phenovec.io.atomic import output_folder, write_text_atomic
from phenovec.io.profiles import write_table
from phenovec.train.checkpoint import resume_checkpoint, save_checkpoint
from phenovec.train.config import ConfigError, config_hash, load_config
from phenovec.train.data import (
    class_index,
    epoch_batches,
    input_scaling,
    make_loader,
    open_crops,
    scale_batch,
    split_cells,
)


@dataclass
class TrainResult:
    out: Path
    epochs: int  # completed epochs (including those of earlier runs)
    best_epoch: int | None
    best_val_accuracy: float | None
    metrics: pd.DataFrame
    last: Path
    best: Path | None
    stopped_early: bool = False
    classes: list = field(default_factory=list)
    score_name: str = "val_accuracy"  # the validation metric that picked best.pt (the objective's)
    best_score: float | None = None


def device_from_name(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r} but CUDA is not available here")
    return torch.device(name)


def _augmenter(cfg: dict, seed: int, epoch: int):
    from phenovec.train.augment import Augment

    a = cfg["augment"]
    if not a["enabled"]:
        return None
    seed = int(np.random.SeedSequence([seed, epoch, 0xA06]).generate_state(1)[0])
    lo, hi = (float(v) for v in a["contrast"])
    return Augment(seed, crop=a["crop"] > 0, flip=a["flip"], rot90=a["rotate"], brightness=a["brightness"] > 0,
                   contrast=(lo, hi) != (1.0, 1.0), crop_p=a["crop"], brightness_delta=a["brightness"],
                   contrast_range=(lo, hi))


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 0x70C4]).generate_state(1)[0])


def train(config, overrides: dict | None = None, progress: bool | None = None) -> TrainResult:
    """Train (or resume) the run described by ``config`` (a YAML path or dict; see ``phenovec.train.config``).
    Under ``torchrun`` (``WORLD_SIZE`` > 1) each process trains a slice of every batch (``phenovec.train.distributed``)
    and rank 0 alone writes the run folder."""
    from phenovec.train.distributed import join_world

    cfg = load_config(config, overrides)
    world = join_world(cfg["train"]["device"])
    try:
        return _train(cfg, world, progress)
    finally:
        world.close()


def _train(cfg: dict, world, progress) -> TrainResult:
    import contextlib
    from types import SimpleNamespace

    import torch
    from tqdm.auto import tqdm

    from phenovec import __version__
    from phenovec.train.distributed import rank_device, wrap_model
    from phenovec.train.inputs import crop_rule, field_rule, is_field_store, open_store, saved_field_stats
    from phenovec.train.models import build_model
    from phenovec.train.objectives import objective_class
    from phenovec.train.schedule import build_optimizer, build_scheduler

    d, m, o, t = cfg["data"], cfg["model"], cfg["optim"], cfg["train"]
    out = Path(t["out"])
    if t["threads"]:
        torch.set_num_threads(int(t["threads"]))
    device = rank_device(world, device_from_name(t["device"]))
    amp = device.type == "cuda" and t["amp"] in ("auto", True)
    chash = config_hash(cfg)
    started = time.monotonic()
    objective = objective_class(t["task"])(cfg)
    score_key = f"val_{objective.score}"

    store = open_store(d)
    fields = is_field_store(store)
    source = d["fields"] if fields else d["crops"]
    what = "fields" if fields else "cells"
    cells = store.cells
    split = split_cells(cells, d, t["seed"])
    # own, writable masks: under pandas' copy-on-write (pycytominer turns it on) to_numpy() gives read-only views
    is_train, is_val = (split == "train").to_numpy(copy=True), (split == "val").to_numpy(copy=True)
    if not is_train.any():
        raise ConfigError(f"{source}: no training {what} after the split (check data.holdout_plates)")
    targets = objective.targets(cells, is_train)
    if targets.usable is not None:
        is_val &= targets.usable
        is_train &= targets.usable
    rows = cells["row"].to_numpy(dtype=np.int64)
    tr_rows, tr_y = rows[is_train], targets.values[is_train]
    va_rows, va_y = rows[is_val], targets.values[is_val]
    tr_groups = targets.groups[is_train] if targets.groups is not None else None
    if d["balance"] in ("sampler", "duplicate") and tr_groups is None:
        raise ConfigError(f"data.balance: {d['balance']} is not defined for train.task: {t['task']} (use none)")
    if tr_groups is None:
        tr_groups = np.zeros(len(tr_rows), dtype=np.int64)
    # rank 0 owns the run folder (locked; a run that fails before its first checkpoint leaves nothing)
    folder = output_folder(out) if world.main else contextlib.nullcontext(SimpleNamespace(resumable=False))
    with folder as run:
        if world.main:
            split_table = cells.drop(columns=[c for c in ("edge",) if c in cells.columns]).assign(
                split=split.to_numpy())
            write_table(split_table, out / "split.parquet")
        n_ch = store.shape[1]

        torch.manual_seed(t["seed"])
        model = build_model(m["arch"], n_ch, targets.outputs, weights=m["weights"], dropout=m["dropout"]).to(device)
        objective.setup(model, tr_y, device)
        extra = objective.extra_modules()
        if extra is not None:
            if world.parallel:
                raise ConfigError(f"train.task: {t['task']} trains an extra module; data-parallel training "
                                  "(torchrun) supports classify and assays")
            extra.to(device)
        params = torch.nn.ModuleList([model] + ([extra] if extra is not None else []))
        optimizer = build_optimizer(params, o["name"], lr=o["lr"], weight_decay=o["weight_decay"],
                                    momentum=o["momentum"])
        sampler = d["balance"] if d["balance"] in ("sampler", "duplicate") else False
        steps = len(epoch_batches(tr_rows, tr_groups, store.chunk_cells, d["batch_size"], t["seed"], 0,
                                  d["subsample"], sampler, d["shuffle_chunks"]))
        scheduler = build_scheduler(optimizer, o["schedule"], epochs=t["epochs"], steps_per_epoch=steps,
                                    warmup_epochs=o["warmup_epochs"], step_size=o["step_size"], gamma=o["gamma"],
                                    milestones=o["milestones"])
        scaler = torch.amp.GradScaler("cuda") if amp else None

        start_epoch, metrics, best = 0, [], {"epoch": None, score_key: None}
        last_path, best_path = out / "last.pt", out / "best.pt"
        run.resumable = last_path.exists()
        ck = resume_checkpoint(out, chash)
        world.barrier()  # every process has read last.pt before rank 0 may replace it
        if ck is not None:
            model.load_state_dict(ck["model_state"])
            if extra is not None:
                extra.load_state_dict(ck["objective_state"])
            optimizer.load_state_dict(ck["optimizer_state"])
            scheduler.load_state_dict(ck["scheduler_state"])
            if scaler is not None and ck.get("scaler_state"):
                scaler.load_state_dict(ck["scaler_state"])
            start_epoch, metrics, best = int(ck["epoch"]), list(ck["metrics"]), dict(ck["best"])
        rule = (field_rule(store, d, tr_rows, t["seed"], saved_field_stats(ck)) if fields
                else crop_rule(store, d))
        data_config = {**rule.data_config, "task": t["task"], "classes": [], **targets.meta}
        net = wrap_model(world, model, device)

        cache = d["shuffle_chunks"] + 2
        stopped_early = False
        for epoch in range(start_epoch, t["epochs"]):
            torch.manual_seed(_epoch_seed(t["seed"], epoch))
            plan = epoch_batches(tr_rows, tr_groups, store.chunk_cells, d["batch_size"], t["seed"], epoch,
                                 d["subsample"], sampler, d["shuffle_chunks"])
            plan, shards = world.shard_plan(plan) if world.parallel else (plan, None)
            augment = _augmenter(cfg, t["seed"], epoch)
            train_augment = rule.augment(augment)
            loader = make_loader(store, tr_rows, tr_y, plan, d["workers"], d["prefetch"], cache)
            params.train()
            t0, seen, loss_sum, stats = time.monotonic(), 0, 0.0, {}
            bar = tqdm(loader, total=len(plan), desc=f"epoch {epoch + 1}/{t['epochs']}", unit="batch",
                       disable=None if progress is None or not world.main else not progress, leave=False)
            for i, (x, y, _) in enumerate(bar):
                weight = 1.0
                if shards is not None:
                    total, lo, weight = shards[i]
                    if augment is not None:
                        augment.batch_slice = (total, lo)
                x = rule.train_scale(x.to(device, non_blocking=True))
                y = y.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                    loss, batch_stats = objective.step(net, x, y, train_augment)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"epoch {epoch + 1}: the loss became {loss.item()} (lower optim.lr or set "
                                             "optim.clip_grad_norm)")
                scaled = loss * weight if shards is not None else loss
                if scaler is not None:
                    scaler.scale(scaled).backward()
                    if o["clip_grad_norm"]:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(params.parameters(), o["clip_grad_norm"])
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    scaled.backward()
                    if o["clip_grad_norm"]:
                        torch.nn.utils.clip_grad_norm_(params.parameters(), o["clip_grad_norm"])
                    optimizer.step()
                scheduler.step()
                if weight == 0.0:  # a stand-in sample of an empty slice: trained with weight 0, not counted
                    continue
                n = len(y)
                seen += n
                loss_sum += float(loss.detach()) * n
                for k, (v, c) in batch_stats.items():
                    s0, c0 = stats.get(k, (0.0, 0))
                    stats[k] = (s0 + v, c0 + c)
                rate = seen / max(time.monotonic() - t0, 1e-9)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", **objective.progress(stats), cells_s=f"{rate:.0f}")
            train_s = time.monotonic() - t0
            if world.parallel:  # the epoch's sums over every process's slices
                keys = sorted(stats)
                sums = world.sum([seen, loss_sum, *[v for k in keys for v in stats[k]]], device)
                seen, loss_sum = int(round(sums[0])), sums[1]
                stats = {k: (sums[2 + 2 * j], sums[3 + 2 * j]) for j, k in enumerate(keys)}
            val = (_validate(objective, model, extra, store, va_rows, va_y, d, rule.eval_scale, device, amp)
                   if world.main else None)
            val = world.broadcast(val)
            row = {"epoch": epoch + 1, "lr": float(optimizer.param_groups[0]["lr"]), "train_loss": loss_sum / seen,
                   **{f"train_{k}": v / max(c, 1) for k, (v, c) in stats.items()},
                   **{f"val_{k}": v for k, v in val.items()},
                   "train_cells": seen, "train_seconds": train_s, "cells_per_s": seen / max(train_s, 1e-9)}
            if world.parallel:
                row = world.broadcast(row)  # rank 0's timings for everyone
            metrics.append(row)
            score, held = row.get(score_key), best.get(score_key)
            improved = score is not None and (held is None or (score > held if objective.higher_is_better
                                                               else score < held))
            if improved:
                best = {"epoch": epoch + 1, score_key: score}
            if world.main:
                state = {"epoch": epoch + 1, "model_config": model.config,
                         "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                         "objective_state": ({k: v.detach().cpu() for k, v in extra.state_dict().items()}
                                             if extra is not None else None),
                         "optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
                         "scaler_state": scaler.state_dict() if scaler is not None else None,
                         "config": cfg, "config_hash": chash, "data_config": data_config, "best": best,
                         "metrics": metrics,
                         "versions": {"phenovec": str(__version__), "torch": str(torch.__version__)}}
                if improved or (not best_path.exists() and best.get(score_key) is None):
                    save_checkpoint(state, best_path)
                save_checkpoint(state, last_path)
                run.resumable = True
                frame = pd.DataFrame(metrics)
                write_text_atomic(out / "metrics.csv", frame.to_csv(index=False))
                write_text_atomic(out / "metrics.json", json.dumps({"config_hash": chash, "task": t["task"],
                                                                    "classes": data_config["classes"],
                                                                    "score": score_key, "best": best,
                                                                    "epochs": metrics}, indent=1))
            stop = (t["max_minutes"] is not None and time.monotonic() - started > 60 * t["max_minutes"]
                    and epoch + 1 < t["epochs"])
            if world.broadcast(stop):
                stopped_early = True
                break
        world.barrier()  # rank 0's last checkpoint is written before any process returns
    done = len(metrics)
    return TrainResult(out, done, best["epoch"], best.get("val_accuracy"), pd.DataFrame(metrics), last_path,
                       best_path if best_path.exists() else None, stopped_early, list(data_config["classes"]),
                       score_key, best.get(score_key))


def _validate(objective, model, extra, store, rows, targets, d, scale, device, amp) -> dict:
    """The objective's validation metrics over the given cells / fields (eval mode, no augmentation, storage
    order); ``scale``: the input rule's evaluation scaling."""
    import torch

    if not len(rows):
        return {objective.score: None}
    plan = epoch_batches(rows, np.zeros(len(rows), dtype=np.int64), store.chunk_cells, d["batch_size"], None, 0)
    loader = make_loader(store, rows, targets, plan, d["workers"], d["prefetch"], 4)
    model.eval()
    if extra is not None:
        extra.eval()

    def batches():
        for x, y, _ in loader:
            x = scale(x.to(device))
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                yield x, y.to(device)

    with torch.no_grad():
        return objective.validate(model, batches())


def embed_crops(model_or_checkpoint, crops_path, batch_size: int = 256, device: str = "auto",
                exclude_edge=("dropped", "invalid"), progress: bool | None = None):
    """(cell table, N x D float32 embeddings) of every cell with a crop, with a trained (or untrained) model.

    ``model_or_checkpoint``: a checkpoint path/dict, or a ``ProfileNet`` (then the crops' ``auto`` input scaling
    is used). This is the PyTorch path for evaluation; ``phenovec profile`` runs exported ONNX models at scale.
    """
    import torch
    from tqdm.auto import tqdm

    from phenovec.train.checkpoint import model_from_checkpoint

    crops = open_crops(crops_path, exclude_edge)
    if isinstance(model_or_checkpoint, torch.nn.Module):
        model, rule = model_or_checkpoint, input_scaling(crops, "auto")
    else:
        model, ck = model_from_checkpoint(model_or_checkpoint)
        rule = ck["data_config"]["input_scaling"]
        if list(ck["data_config"]["crop_shape"]) != list(crops.shape[1:]):
            raise ConfigError(f"{crops_path}: crops are {list(crops.shape[1:])} but the model was trained on "
                              f"{ck['data_config']['crop_shape']}")
    dtype_max = float(np.iinfo(crops.dtype).max) if np.issubdtype(crops.dtype, np.integer) else 1.0
    dev = device_from_name(device)
    model = model.to(dev).eval()
    rows = crops.cells["row"].to_numpy(dtype=np.int64)
    plan = epoch_batches(rows, np.zeros(len(rows), dtype=np.int64), crops.chunk_cells, batch_size, None, 0)
    out = np.empty((len(rows), model.feature_dim), dtype=np.float32)
    loader = make_loader(crops, rows, np.zeros(len(rows), dtype=np.int64), plan, 0, 2, 4)
    with torch.no_grad():
        for x, _, pos in tqdm(loader, total=len(plan), desc="embed", unit="batch",
                              disable=None if progress is None else not progress):
            out[pos.numpy()] = model.embed(scale_batch(x.to(dev), rule, dtype_max)).float().cpu().numpy()
    return crops.cells, out
