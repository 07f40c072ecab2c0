"""MOAProfiler's training recipe (model.recipe: moaprofiler): the multistep schedule (x0.1 at epochs 50 and 75),
minority classes duplicated each epoch (data.balance: duplicate), and the preset's values under the user's own."""
import numpy as np
import pytest
import torch

from phenovec.io.config_schema import ConfigError
from phenovec.train.config import validate_config
from phenovec.train.data import epoch_batches
from phenovec.train.schedule import build_optimizer, build_scheduler


def test_multistep_multiplies_by_gamma_at_each_milestone():
    opt = build_optimizer(torch.nn.Linear(2, 2), "sgd", lr=0.1)
    sch = build_scheduler(opt, "multistep", epochs=100, steps_per_epoch=3, warmup_epochs=0, gamma=0.1,
                          milestones=(50, 75))
    lr = []
    for _ in range(300):
        lr.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    per_epoch = np.array(lr).reshape(100, 3)[:, 0]
    np.testing.assert_allclose(per_epoch[:50], 0.1)
    np.testing.assert_allclose(per_epoch[50:75], 0.01)
    np.testing.assert_allclose(per_epoch[75:], 0.001)
    with pytest.raises(ValueError, match="needs milestones"):
        build_scheduler(opt, "multistep", epochs=10, steps_per_epoch=1)
    with pytest.raises(ValueError, match="increasing"):
        build_scheduler(opt, "multistep", epochs=10, steps_per_epoch=1, milestones=(5, 3))


def test_duplicate_balance_keeps_every_cell_and_evens_the_classes():
    targets = np.array([0] * 50 + [1] * 10 + [2] * 5)
    rows = np.arange(len(targets))
    plan = epoch_batches(rows, targets, chunk_cells=16, batch_size=8, seed=0, epoch=0, balance="duplicate")
    pos = np.concatenate(plan)
    assert set(pos.tolist()) == set(range(len(targets)))  # every cell at least once
    counts = np.bincount(targets[pos])
    assert counts.tolist() == [50, 50, 50]
    again = np.concatenate(epoch_batches(rows, targets, 16, 8, 0, 0, balance="duplicate"))
    other = np.concatenate(epoch_batches(rows, targets, 16, 8, 0, 1, balance="duplicate"))
    assert np.array_equal(pos, again) and not np.array_equal(pos, other)  # seeded per (seed, epoch)


def test_recipe_values_sit_under_the_users_keys(tmp_path):
    cfg = validate_config({"data": {"crops": str(tmp_path)}, "model": {"recipe": "moaprofiler"},
                           "train": {"epochs": 3}, "optim": {"milestones": [1, 2]}})
    assert cfg["optim"]["lr"] == 0.1 and cfg["optim"]["schedule"] == "multistep" and cfg["data"]["batch_size"] == 56
    assert cfg["data"]["balance"] == "duplicate" and cfg["model"]["dropout"] == 0.2
    assert cfg["augment"]["brightness"] == 0.3 and cfg["augment"]["contrast"] == [0.7, 1.3]
    assert cfg["train"]["epochs"] == 3 and cfg["optim"]["milestones"] == [1, 2]  # the user's own values win
    with pytest.raises(ConfigError, match="model.recipe"):
        validate_config({"data": {"crops": str(tmp_path)}, "model": {"recipe": "moaprofilr"}})
    with pytest.raises(ConfigError, match="multistep needs optim.milestones"):
        validate_config({"data": {"crops": str(tmp_path)}, "optim": {"schedule": "multistep"}})
