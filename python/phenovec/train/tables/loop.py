"""The profile-level (table) trainer: CLIP, bimodal autoencoder, SimCLR on profiles, multi-task assay fnn; resumable.

``train_tables(config)`` reads the profile table(s) (``phenovec.io.profiles.read_table``), pairs the two modalities
(``pairing.pair_tables``) or takes one, splits 70/10/20 by compound or Murcko scaffold, standardises each modality
with statistics of the training rows only, trains the task's model (``encoders``) and evaluates the learned
representation on the test split against the raw inputs (``evaluation``).

Output folder (``train.out``): ``split.parquet`` (the pairs' metadata and split), ``pairing.json`` (unmatched keys
per side), ``metrics.csv`` / ``metrics.json`` (one row per epoch: train and validation loss, rows/s), ``last.pt``
(every epoch) and ``best.pt`` (lowest validation loss) as ``phenovec.train.checkpoint`` checkpoints whose
``data_config`` carries the feature columns and standardisation of each modality (what ``export`` embeds in the
ONNX model), and once every epoch has run ``evaluation.json`` with ``knn.csv`` and ``map.csv`` (kNN accuracy and
mAP of raw CP, raw TX and the learned space for replicate and MOA labels) or ``task_auc.csv`` (fnn).

**Exact resume**, as the image trainer (``phenovec.train.loop``): each epoch's batch order, replicate partners,
masks, noise and dropout are seeded from (seed, epoch), the checkpoint holds model and optimiser state, so a run
killed at any point and rerun finishes, on the CPU, with the same weights bit for bit as an uninterrupted run. A
rerun with another configuration is refused; a finished run is not retrained, and raising ``train.epochs``
continues it (there is no learning-rate schedule, so the epoch count changes no earlier epoch). Writes are atomic
and the folder is locked (``phenovec.io.atomic.output_folder``).
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from phenovec.io.atomic import output_folder, write_json_atomic, write_text_atomic
from phenovec.io.profiles import read_table, write_table
from phenovec.train.checkpoint import load_checkpoint, resume_checkpoint, save_checkpoint
from phenovec.train.loop import device_from_name  # the image trainer's device rule (auto | cpu | cuda[:N])
from phenovec.train.tables.config import PAIRED_TASKS, ConfigError, config_hash, load_table_config
from phenovec.train.tables.pairing import (PERTURBATION, PairingError, fit_on_sources, pair_tables,
                                           replicate_groups, single_table, split_rows)

__all__ = ["TableData", "TableTrainResult", "prepare_table_data", "train_tables"]


@dataclass
class TableData:
    """Everything a run trains and evaluates on (standardised with the training rows' statistics)."""

    meta: pd.DataFrame
    split: np.ndarray  # "train" / "val" / "test" per row
    cp: np.ndarray
    cp_features: list
    cp_scaler: object
    tx: np.ndarray | None = None
    tx_features: list = field(default_factory=list)
    tx_scaler: object = None
    labels: np.ndarray | None = None  # fnn: rows x tasks, 1 / 0 / NaN
    tasks: list = field(default_factory=list)
    pairing: dict = field(default_factory=dict)


@dataclass
class TableTrainResult:
    out: Path
    task: str
    epochs: int
    best_epoch: int | None
    best_val_loss: float | None
    metrics: pd.DataFrame
    last: Path
    best: Path | None
    stopped_early: bool = False
    evaluation: dict | None = None
    knn: pd.DataFrame | None = None
    map: pd.DataFrame | None = None
    task_auc: pd.DataFrame | None = None


def _table_config_hash(cfg: dict) -> str:
    """``config_hash`` without ``train.epochs``: nothing here depends on the planned epoch count (no learning-rate
    schedule), so a finished run may be continued by raising it; every other weight-changing key is hashed."""
    keep = dict(cfg, train={k: v for k, v in cfg["train"].items() if k != "epochs"})
    return config_hash(keep)


def _epoch_seed(seed: int, epoch: int, salt: int = 0x7AB1) -> int:
    return int(np.random.SeedSequence([seed, epoch, salt]).generate_state(1)[0])


def _label_matrix(meta: pd.DataFrame, cfg: dict, train: np.ndarray) -> tuple[np.ndarray, list]:
    """fnn labels (rows x tasks, NaN = unmeasured) for each row's compound, tasks with too few training actives or
    inactives dropped (warned, naming them)."""
    from phenovec.io.activity_labels import read_activity_labels

    d = cfg["data"]
    long = read_activity_labels(d["labels"], coding=d["label_coding"], compound_column=d["label_compound_column"])
    wide = long.pivot(index="compound", columns="assay", values="label")
    cpd = meta[d["compound"]].astype(str)
    known = cpd.isin(wide.index.astype(str))
    if not known.any():
        raise PairingError(f"{d['labels']}: no compound of the label file is in {d['cp']} (column "
                           f"{d['compound']!r}; e.g. labels {list(wide.index[:3])}, profiles "
                           f"{list(cpd.unique()[:3])}); check data.compound / data.label_compound_column")
    wide.index = wide.index.astype(str)
    y = wide.reindex(cpd.to_numpy()).to_numpy(dtype=np.float64)
    tasks = [str(c) for c in wide.columns]
    _, first = np.unique(cpd.to_numpy()[train], return_index=True)
    yt = y[np.flatnonzero(train)[first]]
    n_act, n_inact = np.nansum(yt == 1, axis=0), np.nansum(yt == 0, axis=0)
    keep = (n_act >= d["min_per_class"]) & (n_inact >= d["min_per_class"])
    if not keep.all():
        dropped = [t for t, k in zip(tasks, keep) if not k]
        warnings.warn(f"{d['labels']}: {len(dropped)} task(s) with fewer than data.min_per_class = "
                      f"{d['min_per_class']} training actives or inactives dropped: {dropped[:10]}"
                      + (" ..." if len(dropped) > 10 else ""), UserWarning, stacklevel=3)
    if not keep.any():
        raise PairingError(f"{d['labels']}: no task has {d['min_per_class']} actives and inactives among the "
                           "training compounds")
    return np.ascontiguousarray(y[:, keep], dtype=np.float32), [t for t, k in zip(tasks, keep) if k]


def prepare_table_data(cfg: dict) -> TableData:
    """Read, pair, split and standardise the tables of a validated configuration."""
    d, task = cfg["data"], cfg["train"]["task"]
    extra = [d["compound"], d["moa"], d["smiles"]]
    cp_df = read_table(d["cp"])
    if task in PAIRED_TASKS:
        tx_df = read_table(d["tx"])
        paired = pair_tables(cp_df, tx_df, keys=d["keys"], tx_keys=d["tx_keys"], replicate=d["replicate"],
                             cp_features=d["cp_features"], tx_features=d["tx_features"],
                             cp_metadata=d["cp_metadata"], tx_metadata=d["tx_metadata"], extra=extra,
                             key_digits=d["key_digits"], cp_source=d["cp"], tx_source=d["tx"])
    else:
        paired = single_table(cp_df, keys=d["keys"], features=d["cp_features"], metadata=d["cp_metadata"],
                              extra=[*extra, *([d["replicate"]] if d["replicate"] else [])],
                              key_digits=d["key_digits"], source=d["cp"])
    meta = paired.meta
    split = split_rows(meta, d["split"], d["split_fractions"], compound=d["compound"], smiles=d["smiles"],
                       seed=cfg["train"]["seed"], source=d["cp"])
    train = split == "train"
    if train.sum() < 2:
        raise PairingError(f"{d['cp']}: {int(train.sum())} training row(s) after the split: a batch of one cannot "
                           "be trained on (more compounds, or a larger data.split_fractions[0])")
    cp_scaler = fit_on_sources(paired.cp, meta["cp_row"].to_numpy(), train)
    data = TableData(meta, split, cp_scaler(paired.cp), paired.cp_features, cp_scaler,
                     pairing=paired.report.to_dict() if paired.report else {})
    if paired.tx is not None:
        data.tx_scaler = fit_on_sources(paired.tx, meta["tx_row"].to_numpy(), train)
        data.tx, data.tx_features = data.tx_scaler(paired.tx), paired.tx_features
    if d["labels"] is not None:
        data.labels, data.tasks = _label_matrix(meta, cfg, train)
    return data


def _batches(idx: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """``idx`` (shuffled with ``rng``) cut into ceil(n / batch_size) near-equal batches: none of one row."""
    if rng is not None:
        idx = rng.permutation(idx)
    if len(idx) < 2:
        return []
    return [b for b in np.array_split(idx, math.ceil(len(idx) / batch_size))]


def _partners(groups: np.ndarray, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each row of ``idx`` another row of ``idx`` of its group (itself when it is alone), drawn with ``rng``."""
    out = idx.copy()
    by = pd.Series(idx).groupby(groups[idx]).indices
    for members in by.values():
        rows = idx[members]
        if len(rows) < 2:
            continue
        shift = rng.integers(1, len(rows), size=len(rows))
        out[members] = rows[(np.arange(len(rows)) + shift) % len(rows)]
    return out


def _batch(data: TableData, rows: np.ndarray, groups: np.ndarray, device, partner: np.ndarray | None = None):
    import torch

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    b = {"cp": t(data.cp[rows]), "group": t(groups[rows])}
    if data.tx is not None:
        b["tx"] = t(data.tx[rows])
    if data.labels is not None:
        b["labels"] = t(data.labels[rows])
    if partner is not None:
        b["partner"] = t(data.cp[partner])
    return b


def _embed(model, x: np.ndarray, device, batch_size: int = 1024) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(model.embed(torch.from_numpy(x[i:i + batch_size]).to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.feature_dim), dtype=np.float32)


def _evaluate(model, data: TableData, cfg: dict, device, out: Path) -> tuple[dict, dict]:
    """The test-split evaluation (written to ``out``); returns (summary dict, tables)."""
    import torch

    from phenovec.train.tables.evaluation import knn_table, map_table, task_auc

    d, e, task = cfg["data"], cfg["eval"], cfg["train"]["task"]
    test = np.flatnonzero(data.split == "test")
    summary: dict = {"task": task, "test_rows": int(len(test)),
                     "test_compounds": int(data.meta[d["compound"]].iloc[test].nunique())}
    tables: dict = {}
    if len(test) < 3:
        summary["skipped"] = "fewer than 3 test rows"
        return summary, tables
    if task == "fnn":
        probs = _embed(model, data.cp[test], device)
        codes = replicate_groups(data.meta.iloc[test], d["compound"])
        auc = task_auc(probs, data.labels[test], codes, data.tasks)
        tables["task_auc"] = auc
        ok = auc["auc"].dropna()
        summary.update({"tasks": len(auc), "tasks_scored": int(len(ok)),
                        "mean_auc": float(ok.mean()) if len(ok) else None,
                        "sd_auc": float(ok.std(ddof=1)) if len(ok) > 1 else None})
        write_text_atomic(out / "task_auc.csv", auc.to_csv(index=False))
    else:
        meta = data.meta.iloc[test].reset_index(drop=True)
        reps = {"raw_cp": data.cp[test]}
        if data.tx is not None:
            reps["raw_tx"] = data.tx[test]
        reps[task] = _embed(model, data.cp[test], device)
        if task == "clip":
            with torch.no_grad():
                reps["clip_projection"] = model.cp_projection(
                    torch.from_numpy(reps["clip"]).to(device)).cpu().numpy()
        moa = d["moa"] if d["moa"] is not None and meta[d["moa"]].notna().all() else None
        kw = {"perturbation": PERTURBATION, "compound": d["compound"], "moa": moa}
        knn = knn_table(reps, meta, k=e["k"], metric=e["metric"], **kw)
        mp = map_table(reps, meta, metric=e["metric"], null_size=e["map_null_size"], seed=cfg["train"]["seed"], **kw)
        tables.update({"knn": knn, "map": mp})
        summary["knn"] = {f"{r.representation}/{r.label}": r.accuracy for r in knn.itertuples()}
        summary["map"] = {f"{r.representation}/{r.label}": r.mean_average_precision for r in mp.itertuples()}
        write_text_atomic(out / "knn.csv", knn.to_csv(index=False))
        write_text_atomic(out / "map.csv", mp.to_csv(index=False))
        if data.labels is not None:  # activity: a per-assay logistic probe of each representation
            from phenovec.train.tables.evaluation import activity_table

            tr = np.flatnonzero(data.split == "train")
            train_reps = {"raw_cp": data.cp[tr], **({"raw_tx": data.tx[tr]} if data.tx is not None else {}),
                          task: _embed(model, data.cp[tr], device)}
            act = activity_table({k: train_reps[k] for k in train_reps}, {k: reps[k] for k in train_reps},
                                 data.labels[tr], data.labels[test],
                                 replicate_groups(data.meta.iloc[tr], d["compound"]),
                                 replicate_groups(data.meta.iloc[test], d["compound"]), data.tasks,
                                 seed=cfg["train"]["seed"])
            tables["activity"] = act
            summary["activity"] = {r: float(g["auc"].mean()) for r, g in act.groupby("representation", sort=False)}
            write_text_atomic(out / "activity.csv", act.to_csv(index=False))
    write_json_atomic(out / "evaluation.json", summary)
    return summary, tables


def train_tables(config, overrides: dict | None = None, progress: bool | None = None) -> TableTrainResult:
    """Train (or resume) the table run described by ``config`` (a YAML path or dict; see ``tables.config``)."""
    import torch
    from tqdm.auto import tqdm

    from phenovec import __version__
    from phenovec.train.tables.encoders import build_table_model

    cfg = load_table_config(config, overrides)
    d, o, t = cfg["data"], cfg["optim"], cfg["train"]
    task, out = t["task"], Path(t["out"])
    if t["threads"]:
        torch.set_num_threads(int(t["threads"]))
    device = device_from_name(t["device"])
    chash = _table_config_hash(cfg)
    started = time.monotonic()
    data = prepare_table_data(cfg)
    group_col = PERTURBATION if task == "clip" else d["compound"]
    groups = replicate_groups(data.meta, group_col)
    tr = np.flatnonzero(data.split == "train")
    va = np.flatnonzero(data.split == "val")

    with output_folder(out) as run:
        write_table(data.meta.assign(split=data.split), out / "split.parquet")
        write_json_atomic(out / "pairing.json", data.pairing)
        torch.manual_seed(t["seed"])
        model = build_table_model(task, cfg, data.cp.shape[1], None if data.tx is None else data.tx.shape[1],
                                  data.tasks).to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        if o["name"] == "sgd":
            optimizer = torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])
        elif o["name"] == "adamw":
            optimizer = torch.optim.AdamW(params, lr=o["lr"], weight_decay=o["weight_decay"])
        else:
            optimizer = torch.optim.Adam(params, lr=o["lr"], weight_decay=o["weight_decay"])
        data_config = {
            "task": task, "cp_features": list(data.cp_features), "tx_features": list(data.tx_features),
            "cp_standardization": {"mean": torch.from_numpy(data.cp_scaler.mean),
                                   "scale": torch.from_numpy(data.cp_scaler.scale)},
            "tasks": list(data.tasks), "keys": list(d["keys"]), "compound": d["compound"], "cp": d["cp"],
            "feature_dim": int(model.feature_dim)}

        start_epoch, metrics, best = 0, [], {"epoch": None, "val_loss": None}
        last_path, best_path = out / "last.pt", out / "best.pt"
        run.resumable = last_path.exists()
        ck = resume_checkpoint(out, chash)
        if ck is not None:
            model.load_state_dict(ck["model_state"])
            optimizer.load_state_dict(ck["optimizer_state"])
            start_epoch, metrics, best = int(ck["epoch"]), list(ck["metrics"]), dict(ck["best"])

        stopped_early = False
        bar = tqdm(range(start_epoch, t["epochs"]), desc=f"train {task}", unit="epoch",
                   disable=None if progress is None else not progress, leave=False)
        for epoch in bar:
            rng = np.random.default_rng(_epoch_seed(t["seed"], epoch))
            torch.manual_seed(_epoch_seed(t["seed"], epoch, 0x70C4))
            plan = _batches(tr, d["batch_size"], rng)
            partner = _partners(groups, tr, rng) if task == "simclr_profiles" else None
            where = {r: i for i, r in enumerate(tr)} if partner is not None else None
            model.train()
            t0, seen, loss_sum = time.monotonic(), 0, 0.0
            for rows in plan:
                p = partner[[where[r] for r in rows]] if partner is not None else None
                batch = _batch(data, rows, groups, device, p)
                optimizer.zero_grad(set_to_none=True)
                loss = model.loss(batch, train=True)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"epoch {epoch + 1}: the loss became {loss.item()} (lower optim.lr or "
                                             "set optim.clip_grad_norm)")
                loss.backward()
                if o["clip_grad_norm"]:
                    torch.nn.utils.clip_grad_norm_(params, o["clip_grad_norm"])
                optimizer.step()
                seen += len(rows)
                loss_sum += float(loss.detach()) * len(rows)
            train_s = time.monotonic() - t0
            val_loss = _val_loss(model, data, va, groups, d["batch_size"], device, t["seed"], epoch)
            row = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "val_loss": val_loss,
                   "train_rows": seen, "train_seconds": train_s, "rows_per_s": seen / max(train_s, 1e-9)}
            if task == "clip":
                row["temperature"] = float(1.0 / model.logit_scale().detach())
            metrics.append(row)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{val_loss:.3f}" if val_loss is not None else "-")
            improved = val_loss is not None and (best["val_loss"] is None or val_loss < best["val_loss"])
            if improved:
                best = {"epoch": epoch + 1, "val_loss": val_loss}
            state = {"epoch": epoch + 1, "model_config": model.config,
                     "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                     "optimizer_state": optimizer.state_dict(), "config": cfg, "config_hash": chash,
                     "data_config": data_config, "best": best, "metrics": metrics,
                     "versions": {"phenovec": str(__version__), "torch": str(torch.__version__)}}
            if improved or (best["val_loss"] is None):
                save_checkpoint(state, best_path)
            save_checkpoint(state, last_path)
            run.resumable = True
            write_text_atomic(out / "metrics.csv", pd.DataFrame(metrics).to_csv(index=False))
            write_text_atomic(out / "metrics.json", json.dumps({"config_hash": chash, "task": task, "best": best,
                                                                "epochs": metrics}, indent=1))
            if t["max_minutes"] is not None and time.monotonic() - started > 60 * t["max_minutes"] \
                    and epoch + 1 < t["epochs"]:
                stopped_early = True
                break
        evaluation, tables = None, {}
        if not stopped_early and len(metrics) >= t["epochs"]:
            if best_path.exists():
                model.load_state_dict(load_checkpoint(best_path)["model_state"])
            evaluation, tables = _evaluate(model, data, cfg, device, out)
    return TableTrainResult(out, task, len(metrics), best["epoch"], best["val_loss"], pd.DataFrame(metrics), last_path,
                            best_path if best_path.exists() else None, stopped_early, evaluation, tables.get("knn"),
                            tables.get("map"), tables.get("task_auc"))


def _val_loss(model, data: TableData, va: np.ndarray, groups: np.ndarray, batch_size: int, device, seed: int,
              epoch: int) -> float | None:
    """Mean loss over the validation rows in fixed batches (augmentations of SimCLR's views seeded per epoch)."""
    import torch

    plan = _batches(va, batch_size, None)
    if not plan:
        return None
    model.eval()
    total, n = 0.0, 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_epoch_seed(seed, epoch, 0x7A1))
        with torch.no_grad():
            for rows in plan:
                total += float(model.loss(_batch(data, rows, groups, device), train=False)) * len(rows)
                n += len(rows)
    return total / n
