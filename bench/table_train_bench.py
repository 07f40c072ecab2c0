"""Benchmark the profile-level (table) trainer: training rows/s per task, and the synthetic kNN table vs the thesis.

Part 1, ``throughput``: per task (``--tasks``; clip, bae, simclr_profiles, fnn), ``phenovec.train.tables.
train_tables`` on synthetic paired profiles (``--cp-dim`` Cell Painting features, ``--tx-dim`` genes: 993 and 978 by
default, FSL-CP's CellProfiler vector and the L1000 landmark genes) with the thesis' network sizes (CP encoder
1024 x 3, TX encoder 4096 x 3, embedding 512, projection 256; BAE [1024, 512, 512] / [512, 512, 1024] /
[1024, 2048, 4096]; fnn 1024 x 3 SELU) unless ``--width`` makes every hidden layer that wide. The rate is the loop's
own ``rows_per_s`` of the training pass of the last epoch (validation, checkpoint and evaluation not counted);
medians over ``--repeats`` fresh runs.

Part 2, ``knn_table`` (``--knn-seeds`` > 0): CLIP and BAE with small networks (width 64) trained ``--knn-epochs``
epochs on the synthetic data of ``tests/test_tables_clip.py`` (a shared latent plus per-well nuisance in each
modality), kNN accuracy (k = 5, the query left out) on the held-out compounds for replicate and MOA labels;
medians over seeds, printed beside the thesis' Table 4.1 (CP 0.416 / 0.784, CL 0.805 / 0.952, BAE 0.428 / 0.784).
Synthetic numbers show the method behaves as designed; they are not a reproduction of the thesis' data.

    python bench/table_train_bench.py --repeats 3 --knn-seeds 3
"""
from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
import tempfile
from pathlib import Path

from measure import emit_document, log, machine_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

THESIS = {"raw_cp": {"replicate": 0.416, "moa": 0.784}, "clip": {"replicate": 0.805, "moa": 0.952},
          "bae": {"replicate": 0.428, "moa": 0.784}}


def throughput(args, root: Path) -> dict:
    from phenovec.train.tables import synthetic_config, train_tables, write_synthetic_tables

    paths = write_synthetic_tables(root / "tp", n_tasks=16, n_moa=8, compounds_per_moa=16, replicates=4,
                                   cp_dim=args.cp_dim, tx_dim=args.tx_dim)
    out = {}
    for task in args.tasks:
        rates = []
        for rep in range(args.repeats):
            cfg = synthetic_config(paths, task, root / f"{task}-{rep}", epochs=args.epochs, batch_size=args.batch_size,
                                   threads=args.threads, map_null_size=0)
            cfg["train"]["device"] = args.device
            cfg["model"].update({"embed_dim": 512, "proj_dim": 256})
            if args.width is None:  # the thesis' sizes (the configuration's defaults)
                for k in ("cp_hidden", "tx_hidden", "bae_encoder", "bae_cp_decoder", "bae_tx_decoder", "fnn_hidden"):
                    cfg["model"].pop(k)
            else:
                for k in ("cp_hidden", "tx_hidden", "fnn_hidden"):
                    cfg["model"][k] = [args.width] * 3
            r = train_tables(cfg, progress=False)
            rates.append(float(r.metrics["rows_per_s"].iloc[-1]))
            log(f"{task} repeat {rep + 1}: {rates[-1]:.0f} rows/s")
        out[task] = {"rows_per_s_median": statistics.median(rates), "rows_per_s": rates,
                     "rows_per_epoch": int(r.metrics["train_rows"].iloc[-1])}
    return out


def knn_table(args, root: Path) -> dict:
    from phenovec.train.tables import synthetic_config, train_tables, write_synthetic_tables

    acc: dict = {}
    for seed in range(args.knn_seeds):
        paths = write_synthetic_tables(root / f"knn{seed}", seed=seed, n_moa=8, compounds_per_moa=16,
                                       nuisance_scale=1.5)
        for task in ("clip", "bae"):
            cfg = synthetic_config(paths, task, root / f"knn{seed}-{task}", epochs=args.knn_epochs,
                                   threads=args.threads)
            cfg["train"].update(seed=seed, device=args.device)
            r = train_tables(cfg, progress=False)
            for row in r.knn.itertuples():
                if row.representation in ("raw_cp", "raw_tx", task):
                    acc.setdefault(row.representation, {}).setdefault(row.label, {})[seed] = row.accuracy
        log(f"knn seed {seed} done")
    table = {}
    for rep, labels in acc.items():
        table[rep] = {label: statistics.median(v.values()) for label, v in labels.items()}
        table[rep]["per_seed"] = {label: list(v.values()) for label, v in labels.items()}
        if rep in THESIS:
            table[rep]["thesis"] = THESIS[rep]
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["clip", "bae", "simclr_profiles", "fnn"])
    ap.add_argument("--cp-dim", type=int, default=993)
    ap.add_argument("--tx-dim", type=int, default=978)
    ap.add_argument("--width", type=int, default=None, help="every hidden width (default: the thesis' sizes)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--knn-seeds", type=int, default=3)
    ap.add_argument("--knn-epochs", type=int, default=30)
    ap.add_argument("--out", default=None, help="also write the JSON document here")
    args = ap.parse_args()
    doc = {"benchmark": "table_train", "started": _dt.datetime.now().isoformat(timespec="seconds"),
           "machine": machine_info(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        doc["throughput"] = throughput(args, Path(tmp))
        if args.knn_seeds > 0:
            doc["knn_table"] = knn_table(args, Path(tmp))
    emit_document(doc, args.out)


if __name__ == "__main__":
    main()
