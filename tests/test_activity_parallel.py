"""Parallel test episodes (phenovec.activity.episode_runner): the rows of ``workers: 2`` are those of ``workers: 1``
(but for each episode's seconds), for a scikit-learn and a PyTorch learner; chunks cover every episode once."""
from __future__ import annotations

import pandas as pd
import pytest
import yaml

from phenovec.activity.benchmark import BenchmarkConfig, run_benchmark
from phenovec.activity.episode_runner import EpisodeRunner, chunks
from phenovec.activity.synthetic import synthetic_activity
from phenovec.io.config_schema import ConfigError


def test_chunks_cover_every_episode_once_in_order():
    plan = [(0, 8), (1, 8), (0, 16)]
    for pieces in (1, 3, 7, 100):
        got = chunks(plan, 10, pieces)
        flat = [(c.task, c.m, c.start + k) for c in got for k in range(c.count)]
        assert flat == [(t, m, e) for t, m in plan for e in range(10)]


def test_two_workers_give_the_rows_of_one(tmp_path):
    labels, wells = synthetic_activity(n_moas=6, compounds_per_moa=12, n_features=8, seed=5)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    wells.to_csv(tmp_path / "wells.csv", index=False)
    raw = {"labels": {"path": "labels.csv"}, "profiles": {"path": "wells.csv"},
           "tasks": {"min_actives": 5, "min_inactives": 5, "test": 2, "validation": 0},
           "episodes": {"support_sizes": [8, 16], "episodes": 3},
           "learners": {"gbm": {"n_configs": 1}, "maml_fo": {"hidden": [16], "meta_batches": 2}}, "seed": 1}
    out = {}
    for workers in (1, 2):
        path = tmp_path / f"bench{workers}.yaml"
        path.write_text(yaml.safe_dump({**raw, "workers": workers}))
        summary = run_benchmark(BenchmarkConfig.from_file(path), tmp_path / f"out{workers}")
        assert summary["episodes"] == 2 * 2 * 2 * 3
        out[workers] = pd.read_csv(tmp_path / f"out{workers}" / "results.csv")
        assert (pd.read_csv(tmp_path / f"out{workers}" / "throughput.csv")["workers"] == workers).all()
    pd.testing.assert_frame_equal(out[1].drop(columns="seconds"), out[2].drop(columns="seconds"))
    assert out[1]["auroc"].nunique() > 3  # real, varied scores


def test_bad_workers():
    base = {"labels": {"one_vs_rest": "m"}, "profiles": {"path": "p.csv"}, "learners": ["logreg"]}
    for bad in (0, True, 1.5):
        with pytest.raises(ConfigError, match="workers must be an integer >= 1"):
            BenchmarkConfig.from_dict({**base, "workers": bad})
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        EpisodeRunner(workers=0)
    with pytest.raises(RuntimeError, match="enter the runner"):
        EpisodeRunner(workers=2).run(None, "x", [], [], n_episodes=1, seed=0, query_size=2)
