"""Data-parallel training (``torchrun``, DDP, gloo on the CPU): two processes give one process's run with the same
global batch (losses, validation, weights and BatchNorm running statistics to float tolerance; augmentation and
BatchNorm over the global batch included), only rank 0 writes the run folder; the batch slicing and its loss
weights."""
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from phenovec.ingest.fields import tile_index
from phenovec.ingest.index import read_image_index
from phenovec.ingest.synth import synth_plate
from phenovec.train import load_checkpoint, train
from phenovec.train.distributed import World

torch.set_num_threads(1)


def test_shard_plan_weights_sum_to_the_global_mean():
    plan = [np.arange(10), np.arange(10, 15), np.array([15])]
    seen = []
    for rank in range(2):
        local, info = World(rank, 2).shard_plan(plan)
        seen.append((local, info))
    (l0, i0), (l1, i1) = seen
    assert [list(a) for a in l0] == [[0, 1, 2, 3, 4], [10, 11], [15]]  # an empty slice: one stand-in sample
    assert [list(a) for a in l1] == [[5, 6, 7, 8, 9], [12, 13, 14], [15]]
    assert [w for _, _, w in i0] == [1.0, 0.8, 0.0] and [w for _, _, w in i1] == [1.0, 1.2, 2.0]
    assert [(t, lo) for t, lo, _ in i1] == [(10, 5), (5, 2), (1, 0)]
    # DDP averages over the 2 processes: sum_r weight_r * mean_r / 2 = the global batch's mean
    for b, p in enumerate(plan):
        x = np.random.default_rng(b).normal(size=len(p))
        parts = [i[b][2] * x[loc[b] - p[0]].mean() if i[b][2] else 0.0 for loc, i in ((l0, i0), (l1, i1))]
        assert sum(parts) / 2 == pytest.approx(x.mean())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    plate = synth_plate(tmp_path / "plate", plates=2, wells=8, sites_per_well=2, size=128, cells_per_site=(4, 8),
                        seed=3, progress=False)
    tile_index(read_image_index(plate["index"], ["DNA", "ER", "RNA", "AGP", "Mito"]), tmp_path / "fields",
               factor=4, chunk_sites=4, progress=False)
    cfg = {"data": {"fields": str(tmp_path / "fields"), "batch_size": 10, "workers": 0, "min_test_plates": 0},
           "model": {"recipe": "moaprofiler", "arch": "resnet_tiny", "dropout": 0.0},  # BatchNorm synchronised
           "optim": {"lr": 0.01, "milestones": [1]},
           "train": {"epochs": 2, "out": str(tmp_path / "one"), "threads": 1, "seed": 11, "device": "cpu"}}
    one = train(cfg, progress=False)
    cfg["train"]["out"] = str(tmp_path / "two")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "phenovec.cli", "train", str(tmp_path / "cfg.yaml"), "--quiet"]
    res = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = pd.read_csv(tmp_path / "one" / "metrics.csv"), pd.read_csv(tmp_path / "two" / "metrics.csv")
    assert list(b["train_cells"]) == list(a["train_cells"])  # both processes' slices counted once
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(b["train_accuracy"], a["train_accuracy"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(b["val_loss"], a["val_loss"], rtol=1e-4)  # float32 sums in another order
    wa, wb = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    assert wa["epoch"] == wb["epoch"] == 2 and wa["data_config"] == wb["data_config"]
    from phenovec.train.models import build_model

    torch.manual_seed(11)  # the loop's initialisation: the training moved the weights far more than the runs differ
    init = build_model("resnet_tiny", 5, len(one.classes), dropout=0.0).state_dict()
    moved = max(float((v - init[k]).abs().max()) for k, v in wa["model_state"].items())
    apart = max(float((v - wb["model_state"][k]).abs().max()) for k, v in wa["model_state"].items())
    assert apart < 1e-3 * moved, (apart, moved)
    for k, v in wa["model_state"].items():
        np.testing.assert_allclose(wb["model_state"][k].numpy(), v.numpy(), rtol=1e-4, atol=2e-5, err_msg=k)
    # rank 0 alone wrote the run folder: the same files as one process's, no temporaries or lock left behind
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert one.best_epoch == load_checkpoint(tmp_path / "two" / "best.pt")["epoch"]
