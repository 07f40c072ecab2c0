"""The table trainer resumes exactly (2 epochs + 2 resumed = 4 straight, bit for bit on the CPU) and refuses a
changed configuration."""
import numpy as np
import pandas as pd
import pytest

from phenovec.io.config_schema import ConfigError
from phenovec.train.checkpoint import load_checkpoint
from phenovec.train.tables.loop import train_tables
from small_tables import small_config, write_small_tables


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    return write_small_tables(tmp_path_factory.mktemp("small"))


_cfg = small_config


def _state(path):
    return load_checkpoint(path)["model_state"]


@pytest.mark.parametrize("task, model", [("clip", {}), ("simclr_profiles", {"positives": "replicates"}),
                                         ("fnn", {})])
def test_resume_gives_the_same_weights(tables, tmp_path, task, model):
    straight = train_tables(_cfg(tables, task, tmp_path / "straight", 4, **model))
    first = train_tables(_cfg(tables, task, tmp_path / "resumed", 2, **model))
    assert first.epochs == 2
    resumed = train_tables(_cfg(tables, task, tmp_path / "resumed", 2, **model), overrides={"train.epochs": 4})
    assert resumed.epochs == 4
    # raising train.epochs continues a finished run (no schedule depends on it)
    a, b = _state(straight.last), _state(resumed.last)
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    pd.testing.assert_frame_equal(straight.metrics.drop(columns=["train_seconds", "rows_per_s"]),
                                  resumed.metrics.drop(columns=["train_seconds", "rows_per_s"]))


def test_changed_config_is_refused_and_finished_run_not_retrained(tables, tmp_path):
    out = tmp_path / "run"
    r = train_tables(_cfg(tables, "bae", out, 2))
    before = (out / "last.pt").stat().st_mtime_ns
    again = train_tables(_cfg(tables, "bae", out, 2))
    assert (out / "last.pt").stat().st_mtime_ns == before and again.epochs == 2 and again.evaluation is not None
    with pytest.raises(ConfigError, match=r"last.pt: holds a run with another configuration"):
        train_tables(_cfg(tables, "bae", out, 2, mask_fraction=0.2))
    assert r.best is not None and (out / "metrics.csv").is_file() and (out / "pairing.json").is_file()


