"""DeepProfiler's pretrained mode (``phenovec.export.pretrained``): each channel as grey -> RGB through an
ImageNet-style network with the user's weights file, C x D features, exported to ONNX and profiled.

The reference is computed here independently: torchvision's network loaded from the same state_dict file, run on
each channel replicated to RGB and standardised with the ImageNet constants written out below, blocks concatenated
in channel order (DeepProfiler's ``repeat_channel_crop_generator`` + ``profiling.py``).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import CPJUMP1_FILES, cpjump1_crops, shared
from phenovec.export import export_pretrained, pretrained_model
from phenovec.runtime import ProfileSession, read_metadata
from phenovec.train.models import WeightsError, build_model

torch.set_num_threads(1)
CHANNELS = list(CPJUMP1_FILES)
BOX = 48
MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def minmax(raw: np.ndarray) -> np.ndarray:
    x = raw.astype(np.float64)
    lo, hi = x.min(axis=(2, 3), keepdims=True), x.max(axis=(2, 3), keepdims=True)
    return np.where(hi > lo, (x - lo) / np.where(hi > lo, hi - lo, 1), 0).astype(np.float32)


@pytest.fixture(scope="module")
def rgb_weights(tmp_path_factory):
    """A torchvision-layout RGB state_dict file (stands in for the ImageNet file) and the network it came from."""
    net = build_model("resnet_tiny", 3, 1000, seed=7).eval()
    state = {**{k: v for k, v in net.backbone.state_dict().items()},
             **{f"fc.{k}": v for k, v in net.head.state_dict().items()}}  # torchvision's head keys, ignored
    path = tmp_path_factory.mktemp("weights") / "resnet_tiny_rgb.pth"
    torch.save(state, path)
    return path, net.backbone


def reference(backbone, x: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Per channel: grey -> RGB, ImageNet standardisation, backbone; blocks concatenated in channel order."""
    blocks = []
    with torch.no_grad():
        for c in range(x.shape[1]):
            rgb = np.repeat(x[:, c:c + 1], 3, axis=1)
            if normalize:
                rgb = (rgb - MEAN) / STD
            blocks.append(backbone(torch.from_numpy(np.ascontiguousarray(rgb, np.float32))).numpy())
    return np.concatenate(blocks, axis=1)


def test_onnx_features_are_per_channel_blocks_of_the_users_network(tmp_path, rgb_weights):
    path, backbone = rgb_weights
    crops = minmax(cpjump1_crops(12, BOX))  # real CPJUMP1 crops, DeepProfiler's min-max
    rep = export_pretrained("resnet_tiny", tmp_path / "m.onnx", channels=CHANNELS, crop_size=BOX, weights=path,
                            parity_crops=crops)
    assert rep.max_abs_diff <= 1e-4 and rep.parity_crops == "given"
    meta = read_metadata(tmp_path / "m.onnx")
    assert meta.feature_dim == 5 * 128 and meta.channels == tuple(CHANNELS)
    assert meta.feature_layout == {"kind": "per_channel", "channels": CHANNELS, "dim": 128}
    names = meta.feature_names()
    assert names[0] == "feature_DNA_0" and names[128] == "feature_ER_0" and names[-1] == "feature_Mito_127"
    assert meta.intensity == {"input_scaling": "minmax"}
    got = ProfileSession(tmp_path / "m.onnx").run(crops)
    ref = reference(backbone, crops)
    assert got.shape == (12, 640)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    # the blocks really are per channel: swapping two channels of the input swaps their blocks
    swapped = crops[:, [1, 0, 2, 3, 4]]
    got2 = ProfileSession(tmp_path / "m.onnx").run(np.ascontiguousarray(swapped))
    np.testing.assert_allclose(got2[:, :128], got[:, 128:256], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got2[:, 256:], got[:, 256:], atol=1e-4, rtol=0)


def test_input_size_resizes_each_channel_bilinearly(rgb_weights):
    path, backbone = rgb_weights
    crops = minmax(cpjump1_crops(4, BOX))
    m = pretrained_model("resnet_tiny", CHANNELS, path, input_size=64)
    with torch.no_grad():
        got = m.embed(torch.from_numpy(crops)).numpy()
    big = torch.nn.functional.interpolate(torch.from_numpy(crops), size=(64, 64), mode="bilinear",
                                          align_corners=False).numpy()
    np.testing.assert_allclose(got, reference(backbone, big), atol=1e-5, rtol=0)
    m2 = pretrained_model("resnet_tiny", CHANNELS, path, normalize=None)
    with torch.no_grad():
        np.testing.assert_allclose(m2.embed(torch.from_numpy(crops)).numpy(),
                                   reference(backbone, crops, normalize=False), atol=1e-5, rtol=0)


def test_efficientnet_b0_gives_deepprofilers_6400_features(tmp_path):
    with pytest.warns(UserWarning, match="randomly initialised"):
        rep = export_pretrained("efficientnet_b0", tmp_path / "b0.onnx", channels=CHANNELS, crop_size=40,
                                n_random_crops=2)
    assert rep.feature_dim == 6400 and rep.max_abs_diff <= 1e-4  # thesis: 5 x 1,280 = 6,400


def test_bad_weights_and_logits_are_refused(tmp_path, rgb_weights):
    wrong = tmp_path / "r18.pth"
    torch.save(build_model("resnet18", 3, 10, seed=0).backbone.state_dict(), wrong)
    with pytest.raises(WeightsError, match="r18.pth"):
        pretrained_model("resnet_tiny", CHANNELS, wrong)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        pretrained_model("resnet_tiny", CHANNELS, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="no classifier"):
        export_pretrained("resnet_tiny", tmp_path / "x.onnx", channels=CHANNELS, crop_size=BOX,
                          weights=rgb_weights[0], logits=True)
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(ValueError, match="distinct"):
        pretrained_model("resnet_tiny", ["DNA", "DNA"], rgb_weights[0])


def test_cli_export_and_profile_pretrained(tmp_path, rgb_weights):
    """`phenovec export --pretrained` then `phenovec profile` on the real CPJUMP1 site: the embeddings of every
    kept cell equal the reference on DeepProfiler-style crops (numpy cut + min-max of the tifffile images)."""
    import tifffile

    from phenovec.io.embeddings import EmbeddingStore

    path, backbone = rgb_weights
    model = tmp_path / "pre.onnx"
    cmd = [sys.executable, "-m", "phenovec.cli", "export", "--pretrained", "resnet_tiny", "--weights", str(path),
           "--channels", *CHANNELS, "--crop-size", str(BOX), "-o", str(model)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rep = json.loads(out.stdout)
    assert rep["feature_dim"] == 640 and rep["pretrained"] == "resnet_tiny" and rep["max_abs_diff"] <= 1e-4
    no_size = [a for a in cmd if a not in ("--crop-size", str(BOX))]
    bad = subprocess.run(no_size, capture_output=True, text=True)
    assert bad.returncode != 0 and "--crop-size is required" in bad.stderr

    site = shared("deepprofiler-cpjump1-site")
    nuclei = pd.read_csv(site / "Nuclei.csv", usecols=["AreaShape_Center_X", "AreaShape_Center_Y"]).head(30)
    xs, ys = nuclei["AreaShape_Center_X"].to_numpy(), nuclei["AreaShape_Center_Y"].to_numpy()
    index = pd.DataFrame({"Metadata_Plate": ["P1"], "Metadata_Well": ["A01"], "Metadata_Site": [1],
                          **{f"FileName_{c}": [str(site / f)] for c, f in CPJUMP1_FILES.items()}})
    index.to_csv(tmp_path / "index.csv", index=False)
    pd.DataFrame({"Metadata_Plate": "P1", "Metadata_Well": "A01", "Metadata_Site": 1, "Location_Center_X": xs,
                  "Location_Center_Y": ys}).to_csv(tmp_path / "nuclei.csv", index=False)
    subprocess.run([sys.executable, "-m", "phenovec.cli", "profile", str(model), "--index",
                    str(tmp_path / "index.csv"), "--locations", str(tmp_path / "nuclei.csv"), "-o",
                    str(tmp_path / "prof"), "--dtype", "float32", "--no-progress", "--workers", "1"],
                   capture_output=True, text=True, check=True)
    store = EmbeddingStore(tmp_path / "prof" / "embeddings.zarr")
    assert store.features[:2] == ["feature_DNA_0", "feature_DNA_1"] and len(store.features) == 640
    wells = pd.read_parquet(tmp_path / "prof" / "wells_mean.parquet")
    assert "feature_Mito_127" in wells.columns
    img = np.stack([tifffile.imread(site / f) for f in CPJUMP1_FILES.values()])
    cx, cy = np.round(xs).astype(int) - BOX // 2, np.round(ys).astype(int) - BOX // 2
    inside = (cx >= 0) & (cy >= 0) & (cx + BOX <= img.shape[2]) & (cy + BOX <= img.shape[1])
    ref_crops = np.stack([img[:, y0:y0 + BOX, x0:x0 + BOX] for x0, y0 in zip(cx[inside], cy[inside])])
    keep = np.stack([xs[inside], ys[inside]], axis=1)
    meta = store.meta
    assert len(meta) == len(keep) > 10
    np.testing.assert_allclose(meta[["x", "y"]].to_numpy(), keep, atol=0)
    np.testing.assert_allclose(np.asarray(store.array[:]), reference(backbone, minmax(ref_crops)), atol=1e-4, rtol=0)
