"""Image inputs (phenovec.activity.crop_units, phenovec.activity.learners.images): a tiny synthetic crop store
(``phenovec synth`` + ``phenovec crop``), one unit per well, one-vs-rest MOA tasks; the prototypical network and
MAML on the trainer's resnet_tiny are above chance, and lower when the wells' crops are shuffled across wells."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from phenovec.activity.crop_units import unit_crops
from phenovec.activity.episodes import episodes
from phenovec.activity.learners import learner_class
from phenovec.activity.learners.images import CropSetNet
from phenovec.activity.tasks import build_tasks
from phenovec.io.activity_labels import one_vs_rest_labels

UNIT = ["Metadata_Plate", "Metadata_Well"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    from phenovec.activity.benchmark import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """56 wells (8 per treatment, 3 MOAs + DMSO) of 6-8 cells: 5 x 32 x 32 uint16 crops (conftest's synth_crops, 48 x 48
    crops of ~60 cells per well, takes several times longer to embed)."""
    from conftest import synth_crop_store

    return synth_crop_store(tmp_path_factory.mktemp("activity-crops"), wells=56, sites_per_well=1, size=128,
                            cells_per_site=(6, 8))


def _tasks(crops, shuffle: bool):
    x, cells, shape = unit_crops(crops, UNIT, crops_per_unit=3, seed=0)
    if shuffle:  # each well gets another well's crops
        x.index = np.random.default_rng(1).permutation(x.index.to_numpy())
    labels = one_vs_rest_labels(cells, compound_column="unit", class_column="Metadata_MOA")
    return build_tasks(labels, x, min_actives=5, min_inactives=5, test=2, validation=0, seed=0), shape


def test_unit_crops_rows_are_each_wells_crops(crops):
    x, cells, shape = unit_crops(crops, UNIT, crops_per_unit=3, seed=0)
    assert shape == (5, 32, 32) and x.shape == (56, 3 * 5 * 32 * 32)
    assert x.index[0] == "SYNTH-P01|A01" and set(x.index) == set(cells["unit"])
    assert 0.0 <= x.to_numpy().min() and x.to_numpy().max() <= 1.0  # the trainer's input scaling
    again, _, _ = unit_crops(crops, UNIT, crops_per_unit=3, seed=0)
    np.testing.assert_array_equal(x.to_numpy(), again.to_numpy())
    other, _, _ = unit_crops(crops, UNIT, crops_per_unit=3, seed=1)
    assert not np.array_equal(x.to_numpy(), other.to_numpy())
    many, _, _ = unit_crops(crops, UNIT, crops_per_unit=20, seed=0)  # more than a well's cells: with replacement
    assert many.shape == (56, 20 * 5 * 32 * 32)
    with pytest.raises(ValueError, match="crops_per_unit"):
        unit_crops(crops, UNIT, crops_per_unit=0)


def test_crop_set_net_averages_crop_embeddings():
    import torch

    net = CropSetNet(2 * 5 * 32 * 32, (5, 32, 32), 4).eval()
    x = torch.rand(3, 2 * 5 * 32 * 32)
    with torch.no_grad():
        crops = x.reshape(6, 5, 32, 32)
        expected = net.head(net.backbone(crops).reshape(3, 2, -1).mean(1))
        torch.testing.assert_close(net(x), expected)
        swapped = torch.cat([x[:, 5 * 32 * 32:], x[:, :5 * 32 * 32]], dim=1)  # crop order does not matter
        torch.testing.assert_close(net(swapped), net(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not whole crops"):
        CropSetNet(100, (5, 32, 32), 1)


LEARNERS = {"protonet_img": {"episodes": 20}, "maml_img": {"meta_batches": 3, "inner_steps": 1, "inner_lr": 0.5}}


def _mean_auroc(name, ts, shape) -> float:
    learner = learner_class(name)(crop_shape=shape, **LEARNERS[name]).pretrain(ts.train, seed=0)
    scores = []
    for task in ts.test:
        for e in episodes(task, 8, 12, seed=0):
            learner.fit(task.x[e.support], task.y[e.support], seed=0)
            scores.append(roc_auc_score(task.y[e.query], learner.predict_proba(task.x[e.query])))
    return float(np.mean(scores))


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_image_learners_learn_moa_tasks(crops, name):
    ts, shape = _tasks(crops, shuffle=False)
    signal = _mean_auroc(name, ts, shape)
    shuffled = _mean_auroc(name, *_tasks(crops, shuffle=True))
    # measured (seed 0): protonet_img 0.775 vs 0.595 shuffled, maml_img 0.642 vs 0.527. The shuffled control is one
    # fixed relabelling of the same wells (also labelled by the training tasks), not a fresh draw: it need not sit
    # at 0.5, only below the real signal.
    assert signal > 0.6, signal
    assert shuffled < signal - 0.08, (signal, shuffled)


def test_benchmark_config_runs_image_learners_on_a_crop_store(crops, tmp_path):
    """``crops:`` instead of ``profiles.path``: units from the crop store, one-vs-rest labels from its cell table, the
    crop shape passed to protonet_img; the profile learners refuse nothing (logreg reads the flattened crops)."""
    from phenovec.activity.benchmark import BenchmarkConfig, run_benchmark
    from phenovec.io.config_schema import ConfigError

    raw = {"labels": {"one_vs_rest": "Metadata_MOA"},
           "crops": {"path": str(crops), "unit_columns": UNIT, "per_unit": 2},
           "tasks": {"min_actives": 5, "min_inactives": 5, "test": 2, "validation": 0},
           "episodes": {"support_sizes": [8], "episodes": 3},
           "learners": {"protonet_img": {"episodes": 5}, "logreg": {"n_configs": 1}}}
    summary = run_benchmark(BenchmarkConfig.from_dict(raw), tmp_path / "out")
    assert summary["test_tasks"] == 2 and summary["episodes"] == 2 * 2 * 3
    with pytest.raises(ConfigError, match="exactly one of profiles.path"):
        BenchmarkConfig.from_dict({**raw, "profiles": {"path": "w.csv"}})
    from phenovec.activity.synthetic import synthetic_activity

    _, wells = synthetic_activity(n_moas=4, compounds_per_moa=12, n_features=4, seed=0)
    wells.to_csv(tmp_path / "w.csv", index=False)
    on_profiles = BenchmarkConfig.from_dict({**{k: v for k, v in raw.items() if k != "crops"},
                                             "profiles": {"path": "w.csv"}}, base=tmp_path)
    with pytest.raises(ConfigError, match="protonet_img needs crop inputs"):
        run_benchmark(on_profiles, tmp_path / "o2")
