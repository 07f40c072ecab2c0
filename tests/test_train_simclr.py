"""train.task: simclr (phenovec.train.objectives.simclr): SimCLR on crops learns (loss falls, kNN accuracy of the
learned encoder beats the untrained one on the synthetic plate's MOAs), resumes exactly, exports to ONNX with
parity, survives a last batch of one, and refuses configurations it cannot train."""
import warnings

import numpy as np
import pandas as pd
import pytest

import torch

from phenovec.train import ConfigError, embed_crops, load_checkpoint, load_config, train  # noqa: E402
from phenovec.train.config import default_config  # noqa: E402
from phenovec.train.models import build_model  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch with 1 thread: on 2 shared cores it runs these tiny networks ~10x faster than with 2."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_crops(tmp_path_factory):
    """One synthetic plate (7 treatments of 4 MOAs, 28 wells, ~900 cells) cropped to 5 x 32 x 32 uint16."""
    from conftest import synth_crop_store

    return synth_crop_store(tmp_path_factory.mktemp("simclr-plate"), wells=28, sites_per_well=2, size=192,
                            cells_per_site=(14, 18))


def _cfg(crops, out, **over):
    cfg = {"data": {"crops": str(crops), "batch_size": 64, "workers": 0, "subsample": 0.5},
           "model": {"arch": "resnet_tiny"},
           "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant", "warmup_epochs": 0},
           "train": {"task": "simclr", "epochs": 8, "out": str(out), "threads": 1, "seed": 0}}
    for k, v in over.items():
        sec, key = k.split(".")
        cfg.setdefault(sec, {})[key] = v
    return cfg


def _knn_moa(model_or_checkpoint, crops) -> float:
    """scikit-learn's 5-NN (cosine) MOA accuracy of the encoder's cell embeddings, wells kept whole by 4-fold
    GroupKFold (a cell's own well never votes)."""
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    cells, emb = embed_crops(model_or_checkpoint, crops, progress=False)
    return float(cross_val_score(KNeighborsClassifier(5, metric="cosine"), emb, cells["Metadata_MOA"],
                                 groups=cells["Metadata_Well"], cv=GroupKFold(4)).mean())


def test_simclr_learns_a_space_where_moas_cluster(tiny_crops, tmp_path):
    res = train(_cfg(tiny_crops, tmp_path / "run"), progress=False)
    m = res.metrics
    assert res.score_name == "val_knn_accuracy" and res.best_score == m["val_knn_accuracy"].max()
    assert m["train_loss"].iloc[-1] < m["train_loss"].iloc[0] - 0.3, m[["epoch", "train_loss"]]
    assert m["val_loss"].iloc[-1] < m["val_loss"].iloc[0], m[["epoch", "val_loss"]]
    assert m["train_view_accuracy"].iloc[-1] > m["train_view_accuracy"].iloc[0]
    # the model trained by the loop starts from torch.manual_seed(seed): the same untrained network
    torch.manual_seed(0)
    untrained = build_model("resnet_tiny", 5, 1)
    before, after = _knn_moa(untrained, tiny_crops), _knn_moa(res.best, tiny_crops)
    print(f"5-NN MOA accuracy untrained {before:.3f} -> SimCLR {after:.3f} (chance 0.25); best epoch "
          f"{res.best_epoch}, val kNN {res.best_score:.3f}")
    assert after > before + 0.05, (before, after)
    ck = load_checkpoint(res.best)
    # the projection head is checkpointed beside the encoder; the classifier head is one unused output
    assert ck["objective_state"]["0.weight"].shape == (512, 128)
    assert ck["objective_state"]["4.weight"].shape == (128, 512)
    assert ck["model_config"]["num_classes"] == 1
    assert ck["data_config"]["task"] == "simclr" and ck["data_config"]["knn_label_column"] == "Metadata_Treatment"


def test_resume_continues_to_the_uninterrupted_weights_and_head(tiny_crops, tmp_path):
    over = {"train.epochs": 3, "data.subsample": 0.2, "simclr.positives": "replicates",
            "simclr.replicate_column": "Metadata_MOA"}
    ref = train(_cfg(tiny_crops, tmp_path / "ref", **over), progress=False)
    cut = train(_cfg(tiny_crops, tmp_path / "cut", **over, **{"train.max_minutes": 0}), progress=False)
    assert cut.stopped_early and cut.epochs == 1
    done = train(_cfg(tiny_crops, tmp_path / "cut", **over), progress=False)
    assert done.epochs == 3
    a, b = load_checkpoint(ref.last), load_checkpoint(done.last)
    for key in ("model_state", "objective_state"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    cols = ["train_loss", "val_loss", "val_knn_accuracy", "train_view_accuracy"]
    pd.testing.assert_frame_equal(ref.metrics[cols], done.metrics[cols])


def test_export_keeps_the_encoder_with_onnx_parity(tiny_crops, tmp_path):
    import onnx

    from phenovec.export import export_onnx

    res = train(_cfg(tiny_crops, tmp_path / "run", **{"train.epochs": 1, "data.subsample": 0.2}), progress=False)
    rep = export_onnx(res.last, tmp_path / "simclr.onnx", opset=17)
    assert rep.parity_crops == "store" and rep.parity is not None and rep.max_abs_diff <= 1e-4
    assert rep.feature_dim == 128 and rep.outputs == ["features"]
    model = onnx.load(tmp_path / "simclr.onnx")
    assert [o.name for o in model.graph.output] == ["features"]


def test_a_last_batch_of_one_is_dropped_not_crashed(tiny_crops, tmp_path):
    from phenovec.train.data import open_crops, split_cells

    cfg = load_config(_cfg(tiny_crops, tmp_path / "one"))
    cells = open_crops(tiny_crops).cells
    n_train = int((split_cells(cells, cfg["data"], 0) == "train").sum())
    sub = 40 / n_train  # 40 training cells drawn per epoch: batches of 39 + 1
    over = {"train.epochs": 1, "data.subsample": sub, "data.batch_size": 39}
    with pytest.warns(UserWarning, match=rf"of {n_train} training cell\(s\) left out so that no batch holds a single "
                                         r"crop \(data.batch_size = 39, 40 crops drawn per epoch\)"):
        res = train(_cfg(tiny_crops, tmp_path / "one", **over), progress=False)
    assert res.epochs == 1 and np.isfinite(res.metrics["train_loss"]).all()
    assert res.metrics["train_cells"].iloc[0] == 39  # the subsample of the remaining cells: one full batch
    # the step itself refuses a batch of one with a clear error
    from phenovec.train.augment import Augment
    from phenovec.train.objectives.simclr import SimCLR

    obj = SimCLR(cfg)
    net = build_model("resnet_tiny", 5, 1, seed=0)
    obj.setup(net, np.zeros((2, 2), dtype=np.int64), torch.device("cpu"))
    with pytest.raises(ValueError, match="batch of 1 crop.*NT-Xent needs at least 2"):
        obj.step(net, torch.rand(1, 5, 32, 32), torch.zeros(1, 2, dtype=torch.long), Augment(0))
    # no cell is dropped when the batches divide evenly
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert obj._drop_single_last_batch(cells, np.arange(len(cells)) < 64, np.zeros(len(cells), np.int64)).all()


def test_refusals_name_the_key(tiny_crops, tmp_path):
    def refused(match, **over):
        with pytest.raises(ConfigError, match=match):
            load_config(_cfg(tiny_crops, tmp_path / "x", **over))

    refused("augment.enabled: false.*turn augmentation on", **{"augment.enabled": False})
    refused("every augmentation is off", **{"augment.crop": 0, "augment.flip": False, "augment.rotate": False,
                                            "augment.brightness": 0, "augment.contrast": [1.0, 1.0]})
    refused("data.balance: loss", **{"data.balance": "loss"})
    refused("data.batch_size = 1.*at least 2", **{"data.batch_size": 1})
    refused("simclr.positives = 'wells' is not one of views, replicates", **{"simclr.positives": "wells"})
    refused("unknown key 'simclr.temprature'", **{"simclr.temprature": 0.1})
    refused("unknown section 'simclr'", **{"train.task": "classify", "simclr.temperature": 0.1})
    with pytest.raises(ValueError, match="no column 'Metadata_Compound'"):
        train(_cfg(tiny_crops, tmp_path / "y", **{"simclr.replicate_column": "Metadata_Compound"}), progress=False)
    assert not (tmp_path / "y" / "last.pt").exists()


def test_knn_monitor_accuracy_against_a_loop_reference():
    from phenovec.train.objectives.simclr import knn_monitor_accuracy

    rng = np.random.default_rng(0)
    ref, q = rng.normal(size=(60, 6)), rng.normal(size=(25, 6))
    ref_y, q_y = rng.integers(0, 3, 60), rng.integers(0, 3, 25)

    def loop(k):
        rn, qn = ref / np.linalg.norm(ref, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
        hits = 0
        for i in range(len(q)):
            order = np.argsort(-(rn @ qn[i]), kind="stable")[:k]
            votes = np.bincount(ref_y[order], minlength=3).astype(float)
            best = np.flatnonzero(votes == votes.max())
            first = next(ref_y[j] for j in order if ref_y[j] in best)  # tie: the class of the nearest tied vote
            hits += first == q_y[i]
        return hits / len(q)

    for k in (1, 4, 5, 60):
        got = knn_monitor_accuracy(torch.tensor(q), torch.tensor(q_y), torch.tensor(ref), torch.tensor(ref_y), k)
        assert got == pytest.approx(loop(k)), k


def test_print_config_has_the_simclr_section_with_a_comment_on_every_key():
    import yaml

    from phenovec.commented_yaml import commented_yaml
    from phenovec.train.command import COMMENTS
    from phenovec.train.objectives import available_tasks, objective_class

    assert "simclr" in available_tasks()
    cfg = default_config("simclr")
    assert cfg["simclr"]["temperature"] == 0.5 and cfg["simclr"]["positives"] == "views"
    text = commented_yaml(cfg, {**COMMENTS, **objective_class("simclr").COMMENTS})  # KeyError: a key uncommented
    assert yaml.safe_load(text) == cfg and "lr: 4.0e-4" in text
