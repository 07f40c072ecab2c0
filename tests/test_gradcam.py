"""Grad-CAM (phenovec.train.gradcam): on a planted example (the class is a bright square in channel A; channel B holds
an uninformative square) the CAM is higher on the square and the per-channel maps put the evidence on channel A;
maps are non-negative with the crop's shape; PNGs and the channel-share table are written, for a classifier and an
embedding model (similarity to a reference)."""
import json

import numpy as np
import pandas as pd
import pytest

import torch

from phenovec.train import train  # noqa: E402
from phenovec.train.checkpoint import model_from_checkpoint  # noqa: E402
from phenovec.train.gradcam import grad_cam, gradcam_pngs, target_layer  # noqa: E402

BOX, SIDE = 64, 14


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # ~10x faster than 2 threads on 2 shared cores for these tiny networks
    yield
    torch.set_num_threads(before)


def _square_at(rng):
    """Top-left corner of a SIDE x SIDE square wholly inside one random quadrant."""
    qy, qx = rng.integers(0, 2, 2) * (BOX // 2)
    return qy + rng.integers(1, BOX // 2 - SIDE), qx + rng.integers(1, BOX // 2 - SIDE)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A crops folder of 2-channel 64 x 64 float32 crops, 20 wells x 24 crops: 'square' wells carry a bright square in
    channel A, every crop a bright square in channel B; returns (folder, A-square corner per row or None)."""
    import zarr

    root = tmp_path_factory.mktemp("planted") / "crops"
    root.mkdir()
    rng = np.random.default_rng(0)
    n_wells, per = 20, 24
    x = rng.uniform(0, 0.3, (n_wells * per, 2, BOX, BOX)).astype(np.float32)
    cells, corners = [], []
    for w in range(n_wells):
        label = "square" if w % 2 else "none"
        for _ in range(per):
            i = len(cells)
            by, bx = _square_at(rng)
            x[i, 1, by:by + SIDE, bx:bx + SIDE] = 1.0
            corner = None
            if label == "square":
                corner = _square_at(rng)
                x[i, 0, corner[0]:corner[0] + SIDE, corner[1]:corner[1] + SIDE] = 1.0
            corners.append(corner)
            cells.append({"row": i, "Metadata_Plate": "P1", "Metadata_Well": f"W{w:02d}", "Metadata_Treatment": label,
                          "edge": "inside"})
    arr = zarr.create_array(str(root / "crops.zarr"), shape=x.shape, chunks=(96, 2, BOX, BOX), dtype="float32")
    arr[:] = x
    pd.DataFrame(cells).to_parquet(root / "cells.parquet")
    (root / "manifest.json").write_text(json.dumps({"config": {"channels": ["A", "B"]}, "complete": True}))
    return root, corners


@pytest.fixture(scope="module")
def classifier(planted, tmp_path_factory):
    crops, _ = planted
    out = tmp_path_factory.mktemp("gradcam-run")
    res = train({"data": {"crops": str(crops), "batch_size": 32, "workers": 0},
                 "model": {"arch": "resnet_tiny"},
                 "optim": {"name": "adamw", "lr": 2e-3, "weight_decay": 0.0, "schedule": "constant", "warmup_epochs": 0},
                 "augment": {"crop": 0.0},
                 "train": {"epochs": 4, "out": str(out), "threads": 1, "seed": 0}}, progress=False)
    assert res.best_val_accuracy > 0.95, res.metrics[["epoch", "train_loss", "val_accuracy"]]
    return res.best


def _crops(crops, rows):
    import zarr

    return torch.from_numpy(np.asarray(zarr.open_array(str(crops / "crops.zarr"), mode="r")[rows]))


def test_the_map_is_higher_where_the_planted_class_is(planted, classifier):
    crops, corners = planted
    model, ck = model_from_checkpoint(classifier)
    square = ck["data_config"]["classes"].index("square")
    rows = [i for i, c in enumerate(corners) if c is not None][:12]
    res = grad_cam(model, _crops(crops, rows), target=square)
    assert res.layer == "backbone.layer4" and res.targets == [square] * len(rows)
    assert res.cam.shape == (len(rows), BOX, BOX) and res.channel_maps.shape == (len(rows), 2, BOX, BOX)
    assert (res.cam >= 0).all() and (res.channel_maps >= 0).all() and np.allclose(res.cam.max(axis=(1, 2)), 1)
    inside_over_outside, share_a = [], res.channel_share[:, 0]
    for k, r in enumerate(rows):
        y, x = corners[r]
        mask = np.zeros((BOX, BOX), bool)
        mask[y:y + SIDE, x:x + SIDE] = True
        inside_over_outside.append(res.cam[k][mask].mean() / max(res.cam[k][~mask].mean(), 1e-9))
        a = res.channel_maps[k, 0]
        assert a[mask].mean() > 3 * a[~mask].mean()  # channel A's map sits on the square
    print(f"CAM inside / outside the square: median {np.median(inside_over_outside):.2f}; channel A share: median "
          f"{np.median(share_a):.2f}")
    assert np.median(inside_over_outside) > 1.5 and min(inside_over_outside) > 1.0
    assert np.median(share_a) > 0.7  # the evidence is in the stain that carries the class, not the distractor


def test_pngs_and_channel_shares_for_a_classifier_and_an_embedding_reference(planted, classifier, tmp_path):
    crops, corners = planted
    rows = [i for i, c in enumerate(corners) if c is not None][:2] + [0]
    paths = gradcam_pngs(classifier, crops, rows, tmp_path / "cls", target="square")
    assert [p.name for p in paths] == [f"gradcam_row{r}.png" for r in rows]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    share = pd.read_csv(tmp_path / "cls" / "channel_share.csv")
    assert list(share.columns) == ["row", "target", "score", "channel", "share"] and len(share) == 2 * len(rows)
    sums = share.groupby("row")["share"].sum()
    assert np.allclose(sums[rows[:2]], 1.0)  # square crops: evidence split between the channels
    assert sums[0] in (0.0, 1.0) or np.isclose(sums[0], 1.0)  # a crop without a square may hold no evidence at all
    assert (share["target"] == "class square").all()
    # the embedding path (a SimCLR checkpoint's): similarity to a reference vector, here the direction from the mean
    # embedding of the crops without an A square to that of the crops with one (what tells them apart: channel A;
    # similarity to the 'square' mean alone also rewards the B square every crop has, ~half the evidence)
    paths = gradcam_pngs(classifier, crops, rows[:1], tmp_path / "emb",
                         target=_square_direction(classifier, crops, corners))
    assert paths[0].exists()
    s = pd.read_csv(tmp_path / "emb" / "channel_share.csv")
    assert (s["target"] == "similarity to the reference").all() and -1 <= s["score"].iloc[0] <= 1
    assert s.loc[s["channel"] == "A", "share"].item() > 0.6
    # a finer layer by name
    model, _ = model_from_checkpoint(classifier)
    res = grad_cam(model, _crops(crops, rows[:1]), layer="backbone.layer3")
    assert res.layer == "backbone.layer3" and res.cam.shape == (1, BOX, BOX)


def _square_direction(checkpoint, crops, corners):
    """Mean embedding of 40 crops with an A square minus that of 40 without (none of the crops explained)."""
    model, _ = model_from_checkpoint(checkpoint)
    square = [i for i, c in enumerate(corners) if c is not None][20:60]
    none = [i for i, c in enumerate(corners) if c is None][20:60]
    with torch.no_grad():
        return (model.embed(_crops(crops, square)).mean(0) - model.embed(_crops(crops, none)).mean(0)).numpy()


def test_embedding_model_without_classes_uses_label_means_or_the_chosen_crops(planted, classifier, tmp_path):
    """A checkpoint without classes (as simclr writes) explains similarity: to a label's mean embedding, or to the
    mean of the chosen crops; one crop and no target is refused."""
    from phenovec.train.checkpoint import load_checkpoint

    crops, corners = planted
    ck = load_checkpoint(classifier)
    ck["data_config"] = {**ck["data_config"], "classes": [], "knn_label_column": "Metadata_Treatment"}
    rows = [i for i, c in enumerate(corners) if c is not None][:2]
    gradcam_pngs(ck, crops, rows, tmp_path / "label", target="square")
    s = pd.read_csv(tmp_path / "label" / "channel_share.csv")
    assert (s["target"] == "similarity to square").all()
    gradcam_pngs(ck, crops, rows, tmp_path / "mean")
    assert (pd.read_csv(tmp_path / "mean" / "channel_share.csv")["target"]
            == "similarity to the mean of the chosen crops").all()
    with pytest.raises(ValueError, match="give target .* or at least 2 rows"):
        gradcam_pngs(ck, crops, rows[:1], tmp_path / "one")
    with pytest.raises(ValueError, match="no crop has Metadata_Treatment = 'circle'"):
        gradcam_pngs(ck, crops, rows, tmp_path / "x", target="circle")


@pytest.mark.parametrize("arch, layer", [("resnet_tiny", "backbone.layer4"), ("efficientnet_tiny", "backbone.features.8"),
                                         ("densenet121", "backbone.features"), ("gapnet", "backbone.block4"),
                                         ("sc_cnn", "backbone.block4")])
def test_every_arch_has_its_last_conv_block_and_valid_maps(arch, layer):
    from phenovec.train.models import build_model

    model = build_model(arch, 3, 4, seed=0)
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    res = grad_cam(model, x, target=1)
    assert res.layer == layer and res.cam.shape == (2, 96, 96) and res.channel_maps.shape == (2, 3, 96, 96)
    assert np.isfinite(res.cam).all() and (res.cam >= 0).all() and (res.channel_maps >= 0).all()
    ref = grad_cam(model, x, reference=np.ones(model.feature_dim, dtype=np.float32))
    assert ref.targets == ["similarity", "similarity"] and np.isfinite(ref.channel_maps).all()


def test_errors_name_the_row_class_or_layer(planted, classifier, tmp_path):
    crops, _ = planted
    with pytest.raises(ValueError, match=r"row\(s\) \[99999\] are not crops of the store"):
        gradcam_pngs(classifier, crops, [0, 99999], tmp_path)
    with pytest.raises(ValueError, match="target 'circle' is not a class .*classes: none, square"):
        gradcam_pngs(classifier, crops, [0], tmp_path, target="circle")
    model, _ = model_from_checkpoint(classifier)
    with pytest.raises(ValueError, match="layer 'backbone.nope' is not a module"):
        target_layer(model, "backbone.nope")
    with pytest.raises(ValueError, match="outside the model's 2 outputs"):
        grad_cam(model, _crops(crops, [0]), target=5)
    assert not list(tmp_path.glob("*.png"))


def test_explain_gradcam_command(planted, classifier, tmp_path):
    from phenovec.cli_options import Parser
    from phenovec.train.gradcam_command import add_explain_parser

    crops, _ = planted
    parser = Parser(prog="phenovec")
    add_explain_parser(parser.add_subparsers(dest="stage"))
    args = parser.parse_args(["explain", "gradcam", str(classifier), "--crops", str(crops), "--query",
                              "Metadata_Well == 'W01'", "--max-crops", "2", "--target", "1", "-o", str(tmp_path)])
    summary = args.run(args)
    assert summary["rows"] == [24, 25] and len(summary["pngs"]) == 2
    assert set(pd.read_csv(tmp_path / "channel_share.csv")["target"]) == {"class square"}
    with pytest.raises(ValueError, match="--rows or --query"):
        args = parser.parse_args(["explain", "gradcam", str(classifier), "--crops", str(crops), "-o", str(tmp_path)])
        args.run(args)
