"""``phenovec activity benchmark CONFIG -o OUT`` end to end on a synthetic MOA-driven activity table, through
:mod:`phenovec.activity.command` (the parser the lead wires into ``phenovec``), in seconds."""
from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from phenovec.activity.benchmark import BenchmarkConfig, fit_seed, run_benchmark
from phenovec.activity.command import add_activity_parser
from phenovec.activity.synthetic import synthetic_activity
from phenovec.activity.wilcoxon import paired_wilcoxon
from phenovec.io.config_schema import ConfigError

LEARNERS = {"logreg": {"n_configs": 2}, "gbm_small": {"learner": "gbm", "n_configs": 2}}


def _cli(argv):
    parser = argparse.ArgumentParser(prog="phenovec")
    add_activity_parser(parser.add_subparsers(dest="stage", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


def _write(tmp_path, shuffle=False, **over):
    labels, wells = synthetic_activity(n_moas=8, n_features=12, seed=4, shuffle=shuffle)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    wells.to_parquet(tmp_path / "wells.parquet")
    cfg = {"labels": {"path": "labels.csv"},
           "profiles": {"path": "wells.parquet", "compound_column": "Metadata_compound"},
           "tasks": {"test": 4, "validation": 1},
           "episodes": {"support_sizes": [8, 16], "episodes": 3},
           "learners": LEARNERS, "seed": 3}
    for key, value in over.items():
        section, _, name = key.partition(".")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_benchmark_end_to_end(tmp_path, capsys):
    cfg = _write(tmp_path)
    out = tmp_path / "out"
    summary = _cli(["activity", "benchmark", str(cfg), "-o", str(out), "--quiet"])
    assert '"test_tasks": 4' in capsys.readouterr().out
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 * 4 * 2 * 3  # learners x test tasks x M x episodes
    assert set(results.columns) >= {"learner", "task", "M", "episode", "auroc", "auprc", "dauprc", "riptop_auprc",
                                    "f1", "balanced_accuracy", "kappa", "seconds"}
    tasks = pd.read_csv(out / "tasks.csv")
    assert sorted(results.task.unique()) == sorted(tasks[tasks.split == "test"].task)
    # summary = mean over episodes, then over tasks
    s = pd.read_csv(out / "summary.csv").set_index(["learner", "M"])
    by_hand = results.groupby(["learner", "task", "M"]).auroc.mean().groupby(["learner", "M"]).mean()
    for key, v in by_hand.items():
        assert s.loc[key, "auroc"] == pytest.approx(v)
    # the MOA signal is learnt
    assert s["auroc"].min() > 0.75 and summary["mean_auroc"]["logreg M=16"] > 0.75
    # Wilcoxon p-values recomputed from the per-task means
    w = pd.read_csv(out / "wilcoxon.csv")
    per_task = results.groupby(["learner", "task", "M"]).auroc.mean().unstack("learner")
    row = w[(w.M == 16) & (w.learner == "logreg") & (w.versus == "gbm_small")].iloc[0]
    pt = per_task.xs(16, level="M")
    assert row.tasks == 4 and row.p == pytest.approx(paired_wilcoxon(pt["logreg"], pt["gbm_small"])[1])
    tp = pd.read_csv(out / "throughput.csv").set_index("learner")
    assert (tp.episodes == 24).all() and (tp.episodes_per_second > 0).all()
    assert (out / "auroc_vs_m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "## Mean AUROC" in report and "### M = 16 (4 tasks)" in report and "auroc_vs_m.png" in report
    # reproducible: the same configuration gives the same episodes and scores
    again = tmp_path / "again"
    _cli(["activity", "benchmark", str(cfg), "-o", str(again), "--quiet", "--learners", "logreg"])
    r2 = pd.read_csv(again / "results.csv")
    pd.testing.assert_frame_equal(r2.drop(columns="seconds"),
                                  results[results.learner == "logreg"].drop(columns="seconds").reset_index(drop=True))


def test_benchmark_at_chance_without_signal(tmp_path):
    cfg = BenchmarkConfig.from_file(_write(tmp_path, shuffle=True, **{"episodes.episodes": 6,
                                                                     "learners": {"logreg": {"n_configs": 2}}}))
    run_benchmark(cfg, tmp_path / "out")
    s = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert np.all(np.abs(s.auroc - 0.5) < 0.12)


def test_one_vs_rest_labels_from_a_profile_column(tmp_path):
    _, wells = synthetic_activity(n_moas=5, n_features=8, seed=1)
    wells.to_csv(tmp_path / "wells.csv", index=False)
    cfg = BenchmarkConfig.from_dict(
        {"labels": {"one_vs_rest": "Metadata_MOA", "exclude_classes": ["moa-0"]},
         "profiles": {"path": "wells.csv"}, "tasks": {"test": 2, "validation": 0},
         "episodes": {"support_sizes": [8], "episodes": 2}, "learners": {"logreg": {"n_configs": 2}}},
        base=tmp_path)
    summary = run_benchmark(cfg, tmp_path / "out")
    tasks = pd.read_csv(tmp_path / "out" / "tasks.csv")
    assert sorted(tasks.task) == ["moa-1", "moa-2", "moa-3", "moa-4"] and summary["test_tasks"] == 2
    assert (tasks.actives == 20).all() and (tasks.inactives == 80).all()


def test_small_tasks_error_or_skip(tmp_path):
    cfg = BenchmarkConfig.from_file(_write(tmp_path, **{"episodes.support_sizes": [8, 59],
                                                        "learners": {"logreg": {"n_configs": 2}}}))
    with pytest.raises(ValueError, match=r"task 'moa-\d': support size M = 59 leaves no query set"):
        run_benchmark(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    cfg.episodes["small_tasks"] = "skip"
    cfg.episodes["episodes"] = 1
    summary = run_benchmark(cfg, tmp_path / "out")
    assert summary["skipped"] == 4 and "## Skipped" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("over, match", [
    ({"learners": {"svm": None}}, r"learners.svm: unknown learner 'svm'"),
    ({"learners": {"logreg": {"n_config": 3}}}, r"learners.logreg: .*n_config"),
    ({"episodes.episode": 3}, r"unknown key 'episodes.episode' \(did you mean 'episodes'\?\)"),
    ({"episodes.support_sizes": [8, 1]}, r"episodes.support_sizes must be a non-empty list of integers >= 2"),
    ({"tasks.test": 1.5}, r"tasks.test must be a fraction in \[0, 1\) or a task count"),
    ({"labels.one_vs_rest": "Metadata_MOA"}, r"exactly one of labels.path .* and labels.one_vs_rest"),
    ({"seeds": 1}, r"unknown key 'seeds' \(did you mean 'seed'\?\)"),
])
def test_config_errors_name_the_key(tmp_path, over, match):
    path = _write(tmp_path, **over)
    with pytest.raises(ConfigError, match=match) as e:
        run_benchmark(BenchmarkConfig.from_file(path), tmp_path / "out")
    assert str(path) in str(e.value)


def test_profile_rows_filter(tmp_path):
    from phenovec.activity.benchmark import load_tasks

    path = _write(tmp_path, **{"profiles.samples": "Metadata_replicate != 0"})
    ts = load_tasks(BenchmarkConfig.from_file(path))
    wells = pd.read_parquet(tmp_path / "wells.parquet")
    t = ts.test[0]
    kept = wells[(wells.Metadata_replicate != 0) & (wells.Metadata_compound == t.compounds[0])]
    np.testing.assert_allclose(t.x[0], kept.filter(like="Cells_").median().to_numpy(), rtol=1e-6)
    bad = _write(tmp_path, **{"profiles.samples": "__import__('os').getcwd()"})
    with pytest.raises(ValueError, match="profiles.samples"):
        BenchmarkConfig.from_file(bad)
    none = _write(tmp_path, **{"profiles.samples": "Metadata_replicate > 5"})
    with pytest.raises(ValueError, match="profiles.samples selects no row"):
        load_tasks(BenchmarkConfig.from_file(none))


def test_missing_profile_names_the_compound(tmp_path):
    path = _write(tmp_path)
    wells = pd.read_parquet(tmp_path / "wells.parquet")
    wells[wells.Metadata_compound != "cpd-0007"].to_parquet(tmp_path / "wells.parquet")
    with pytest.raises(ValueError, match="no profile for labelled compound 'cpd-0007'"):
        run_benchmark(BenchmarkConfig.from_file(path), tmp_path / "out")


def test_fit_seed_depends_on_the_episode_only():
    assert fit_seed(0, "a", 8, 1) == fit_seed(0, "a", 8, 1)
    assert len({fit_seed(0, "a", 8, 1), fit_seed(0, "a", 8, 2), fit_seed(0, "b", 8, 1), fit_seed(1, "a", 8, 1),
                fit_seed(0, "a", 16, 1)}) == 5


def test_command_module_imports_nothing_heavy():
    code = ("import sys, phenovec.activity, phenovec.activity.command, phenovec.activity.learners; "
            "print(sorted(m for m in ('sklearn', 'torch', 'scipy', 'matplotlib', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_torch_threads_are_set_while_learners_run_and_restored():
    """``threads`` (default 1): PyTorch's CPU threads while the learners run, the caller's count restored; a bad value
    is a configuration error naming the key."""
    import torch

    from phenovec.activity.benchmark import BenchmarkConfig, torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    base = {"labels": {"one_vs_rest": "Metadata_moa"}, "profiles": {"path": "p.parquet"}, "learners": ["logreg"]}
    assert BenchmarkConfig.from_dict(base).threads == 1
    assert BenchmarkConfig.from_dict({**base, "threads": None}).threads is None
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        BenchmarkConfig.from_dict({**base, "threads": 0})
