"""``cp+`` learners (FSL-CP's enhanced inputs): profiles concatenated with auxiliary input columns
(``profiles.aux_columns``), chosen per learner with ``inputs: cp+``; the same episodes for both input kinds."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from phenovec.activity.benchmark import BenchmarkConfig, load_tasks, run_benchmark
from phenovec.activity.synthetic import synthetic_activity
from phenovec.io.config_schema import ConfigError

AUX = ["Aux_0", "Aux_1", "Aux_2", "Aux_3"]


def _write(tmp_path, aux_signal: float = 1.0):
    """Profiles without signal (signal 0); the auxiliary columns hold an MOA centroid plus well noise."""
    labels, wells = synthetic_activity(n_moas=8, compounds_per_moa=16, n_features=8, signal=0.0, seed=6)
    rng = np.random.default_rng(7)
    centroids = rng.normal(size=(8, len(AUX))) * 2.0
    moa = wells["Metadata_MOA"].str.removeprefix("moa-").astype(int).to_numpy()
    aux = aux_signal * centroids[moa] + rng.normal(size=(len(wells), len(AUX)))
    wells = pd.concat([wells, pd.DataFrame(aux, columns=AUX)], axis=1)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    wells.to_csv(tmp_path / "wells.csv", index=False)
    return {"labels": {"path": "labels.csv"}, "profiles": {"path": "wells.csv", "aux_columns": AUX},
            "tasks": {"min_actives": 10, "min_inactives": 10, "test": 3, "validation": 0},
            "episodes": {"support_sizes": [16], "episodes": 6},
            "learners": {"logreg": {"n_configs": 1}, "logreg_cp+": {"learner": "logreg", "n_configs": 1,
                                                                     "inputs": "cp+"}},
            "seed": 0}


def test_cp_plus_learners_see_the_auxiliary_columns(tmp_path):
    raw = _write(tmp_path)
    cfg = BenchmarkConfig.from_dict(raw, base=tmp_path)
    ts = load_tasks(cfg)
    assert ts.aux_columns == AUX and ts.features[-4:] == AUX and len(ts.features) == 12
    assert ts.inputs("cp").test[0].x.shape[1] == 8 and ts.inputs("cp+").test[0].x.shape[1] == 12
    np.testing.assert_array_equal(ts.inputs("cp").test[0].x, ts.test[0].x[:, :8])
    run_benchmark(cfg, tmp_path / "out")
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    auroc = results.groupby("learner")["auroc"].mean()
    assert auroc["logreg"] < 0.65 and auroc["logreg_cp+"] > 0.75, auroc.to_dict()  # measured 0.48 and 0.81
    same = results.pivot_table(index=["task", "M", "episode"], columns="learner", values="query_actives")
    assert (same["logreg"] == same["logreg_cp+"]).all()  # the same episodes
    tp = pd.read_csv(tmp_path / "out" / "throughput.csv").set_index("learner")
    assert tp.loc["logreg_cp+", "inputs"] == "cp+" and tp.loc["logreg", "inputs"] == "cp"


def test_cp_plus_at_chance_without_auxiliary_signal(tmp_path):
    cfg = BenchmarkConfig.from_dict(_write(tmp_path, aux_signal=0.0), base=tmp_path)
    run_benchmark(cfg, tmp_path / "out")
    auroc = pd.read_csv(tmp_path / "out" / "results.csv").groupby("learner")["auroc"].mean()
    assert abs(auroc["logreg_cp+"] - 0.5) < 0.12, auroc.to_dict()


def test_cp_plus_errors(tmp_path):
    raw = _write(tmp_path)
    with pytest.raises(ConfigError, match=r"learners.logreg_cp\+: inputs cp\+ needs profiles.aux_columns"):
        BenchmarkConfig.from_dict({**raw, "profiles": {"path": "wells.csv"}}, base=tmp_path)
    with pytest.raises(ConfigError, match="learners.logreg.inputs = 'img'"):
        BenchmarkConfig.from_dict({**raw, "learners": {"logreg": {"inputs": "img"}}}, base=tmp_path)
    missing = BenchmarkConfig.from_dict({**raw, "profiles": {"path": "wells.csv", "aux_columns": ["Aux_9"]}},
                                        base=tmp_path)
    with pytest.raises(ValueError, match="no column 'Aux_9' \\(profiles.aux_columns\\)"):
        load_tasks(missing)
    twice = BenchmarkConfig.from_dict({**raw, "profiles": {"path": "wells.csv", "aux_columns": ["Cells_f0"]}},
                                      base=tmp_path)
    with pytest.raises(ValueError, match="'Cells_f0' is a profile feature already"):
        load_tasks(twice)
