"""phenovec.export: ONNX export of ProfileNet (dynamic batch, metadata, parity with PyTorch on real crops).

References: PyTorch eval-mode outputs of the same model (an independent engine from onnxruntime), the ONNX file
as read by the ``onnx`` package, numpy min-max scaling of crops cut with tifffile + numpy from the real CPJUMP1 site.
"""
import io
import json
from contextlib import redirect_stdout

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import cpjump1_crops
from phenovec.export import ParityError, check_parity, export_onnx, weights_sha256
from phenovec.runtime import read_metadata
from phenovec.train.models import build_model

torch.set_num_threads(1)
CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
BOX = 64
INTENSITY = {"input_scaling": "none", "crop_rescale": True}


def site_raw_crops(n: int = 16) -> np.ndarray:
    """uint16 N x 5 x 64 x 64 crops around the first nuclei lying fully inside the real CPJUMP1 site."""
    return cpjump1_crops(n, BOX)


def minmax(raw: np.ndarray) -> np.ndarray:
    """Per-crop per-channel min-max to [0, 1] (DeepProfiler's crop rescaling), float32."""
    x = raw.astype(np.float64)
    lo, hi = x.min(axis=(2, 3), keepdims=True), x.max(axis=(2, 3), keepdims=True)
    return np.where(hi > lo, (x - lo) / np.where(hi > lo, hi - lo, 1), 0).astype(np.float32)


@pytest.fixture(scope="module")
def real_crops() -> np.ndarray:
    return minmax(site_raw_crops())


def calibrated(arch: str, crops: np.ndarray, seed: int = 0):
    """A ProfileNet whose BatchNorm statistics come from real crops (random-init BN gives ~1e-11 features)."""
    m = build_model(arch, 5, 4, seed=seed)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # cumulative average
    m.train()
    with torch.no_grad():
        for _ in range(2):
            m(torch.from_numpy(crops))
    return m.eval()


def torch_embed(model, crops):
    with torch.no_grad():
        return model.embed(torch.from_numpy(crops)).numpy()


@pytest.mark.parametrize("arch,opset", [("efficientnet_tiny", 18), ("resnet_tiny", 18), ("resnet_tiny", 17)])
def test_dynamic_batch_and_parity_on_real_crops(tmp_path, real_crops, arch, opset):
    model = calibrated(arch, real_crops)
    path = tmp_path / "m.onnx"
    rep = export_onnx(model, path, channels=CHANNELS, crop_size=BOX, intensity=INTENSITY, opset=opset,
                      parity_crops=real_crops[:8])
    assert rep.exporter == ("dynamo" if opset >= 18 else "torchscript")
    assert rep.parity_crops == "given" and rep.parity.n_crops == 8
    assert rep.max_abs_diff <= 1e-4 and rep.feature_dim == model.feature_dim
    assert rep.parity.reference_max_abs == pytest.approx(np.abs(torch_embed(model, real_crops[:8])).max())
    proto = onnx.load(str(path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    (inp,) = proto.graph.input
    assert inp.name == "crops" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [5, BOX, BOX]
    assert [o.name for o in proto.graph.output] == ["features"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (real_crops[:1], real_crops[4:11]):  # batch 1 and 7 (the example batch was 2)
        (got,) = sess.run(None, {"crops": batch})
        ref = torch_embed(model, batch)
        assert got.shape == (len(batch), model.feature_dim)
        assert ref.std() > 1e-3  # non-trivial features, so the tolerance means something
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_logits_output(tmp_path, real_crops):
    model = calibrated("resnet_tiny", real_crops)
    path = tmp_path / "m.onnx"
    rep = export_onnx(model, path, channels=CHANNELS, crop_size=BOX, intensity=INTENSITY, logits=True, opset=17,
                      parity_crops=real_crops[:4])
    assert rep.outputs == ["features", "logits"] and set(rep.parity.per_output) == {"features", "logits"}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    f, lg = sess.run(["features", "logits"], {"crops": real_crops[:3]})
    with torch.no_grad():
        rf, rl = model.forward_features(torch.from_numpy(real_crops[:3]))
    np.testing.assert_allclose(f, rf.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(lg, rl.numpy(), atol=1e-4, rtol=0)
    assert lg.shape == (3, 4)


def test_metadata_round_trip(tmp_path, real_crops):
    model = calibrated("resnet_tiny", real_crops)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, channels=CHANNELS, crop_size=BOX, intensity={"crop_rescale": "minmax"}, opset=17)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["channels"]) == CHANNELS and props["crop_size"] == "64"
    assert json.loads(props["intensity"]) == {"crop_rescale": "minmax"}
    assert props["feature_dim"] == "128" and props["arch"] == "resnet_tiny" and props["opset"] == "17"
    assert json.loads(props["model_config"]) == model.config
    assert props["torch_version"] == torch.__version__
    import phenovec

    assert props["phenovec_version"] == phenovec.__version__
    meta = read_metadata(path)  # the runtime's reader sees the same contract
    assert meta.channels == tuple(CHANNELS) and meta.crop_size == BOX and meta.feature_dim == 128
    assert meta.intensity == {"crop_rescale": "minmax"} and meta.weights_sha256 == props["weights_sha256"]
    # the weights hash follows the weights: same seed + same calibration -> same hash; one changed value -> another
    twin = calibrated("resnet_tiny", real_crops)
    assert weights_sha256(twin) == props["weights_sha256"]
    with torch.no_grad():
        twin.head.bias[0] += 1e-3
    assert weights_sha256(twin) != props["weights_sha256"]


def test_failed_parity_writes_nothing(tmp_path, real_crops):
    model = calibrated("resnet_tiny", real_crops)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous model")
    with pytest.raises(ParityError, match="max abs difference"):
        export_onnx(model, path, channels=CHANNELS, crop_size=BOX, intensity=INTENSITY, opset=17,
                    parity_crops=real_crops[:4], atol=1e-12)  # fp32 kernels differ by ~1e-6: must fail
    assert path.read_bytes() == b"previous model"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temp file left
    new = tmp_path / "new.onnx"
    with pytest.raises(ParityError):
        export_onnx(model, new, channels=CHANNELS, crop_size=BOX, intensity=INTENSITY, opset=17, atol=1e-12)
    assert not new.exists()


def test_check_parity_detects_a_different_model(tmp_path, real_crops):
    model = calibrated("resnet_tiny", real_crops)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, channels=CHANNELS, crop_size=BOX, intensity=INTENSITY, opset=17, parity=False)
    other = calibrated("resnet_tiny", real_crops, seed=1)
    rep = check_parity(other, path, real_crops[:4], raise_on_fail=False)
    assert not rep.passed and rep.max_abs_diff > 1e-2
    with pytest.raises(ParityError):
        check_parity(other, path, real_crops[:4])


def test_bad_inputs_are_named(tmp_path, real_crops):
    model = calibrated("resnet_tiny", real_crops)
    path = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="channel count mismatch: 4 channels"):
        export_onnx(model, path, channels=CHANNELS[:4], crop_size=BOX, intensity=INTENSITY)
    with pytest.raises(ValueError, match="parity_crops have shape"):
        export_onnx(model, path, channels=CHANNELS, crop_size=BOX, intensity=INTENSITY,
                    parity_crops=real_crops[:, :4])
    with pytest.raises(ValueError, match="opset must be >= 17"):
        export_onnx(model, path, channels=CHANNELS, crop_size=BOX, intensity=INTENSITY, opset=16)
    with pytest.raises(ValueError, match="only 'float32'"):
        export_onnx(model, path, channels=CHANNELS, crop_size=BOX, intensity=INTENSITY, dtype="float16")
    with pytest.raises(ValueError, match="needs channels="):
        export_onnx(model, path, crop_size=BOX, intensity=INTENSITY)
    assert not path.exists()


def _checkpoint(tmp_path, model, **data):
    from phenovec.train.checkpoint import save_checkpoint

    dc = {"channels": CHANNELS, "box_size": BOX, "crop_shape": [5, BOX, BOX], "input_scaling": "minmax",
          "dtype_max": 65535.0, "crop_config": {"channels": CHANNELS, "box_size": BOX, "rescale": False},
          "label_column": "Metadata_Treatment", "classes": ["a", "b", "c", "d"], **data}
    return save_checkpoint({"model_config": model.config, "model_state": model.state_dict(), "data_config": dc},
                           tmp_path / "best.pt")


def _crop_store(folder, raw: np.ndarray, channels=CHANNELS):
    """A crop store as `phenovec crop` writes it (crops.zarr + manifest.json) holding ``raw``."""
    import zarr

    folder.mkdir()
    zarr.create_array(str(folder / "crops.zarr"), data=raw, chunks=(4, *raw.shape[1:]))
    (folder / "manifest.json").write_text(json.dumps({"config": {"channels": list(channels), "box_size": BOX}}))
    return folder


def _cli_export(*argv) -> dict:
    import argparse

    from phenovec.export.command import add_export_parser

    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers(dest="stage"))
    args = parser.parse_args(["export", *map(str, argv)])
    buf = io.StringIO()
    with redirect_stdout(buf):
        args.run(args)
    return json.loads(buf.getvalue())


def test_cli_exports_a_checkpoint_with_real_parity_crops(tmp_path, real_crops):
    model = calibrated("resnet_tiny", real_crops)
    raw = site_raw_crops(12)  # raw uint16 crops as `phenovec crop` stores them without --rescale
    store = _crop_store(tmp_path / "crops", raw)
    train_store = _crop_store(tmp_path / "train-crops", raw[::-1].copy())
    ck = _checkpoint(tmp_path, model, crops=str(train_store))
    out = tmp_path / "model.onnx"
    rep = _cli_export(ck, "-o", out, "--parity-crops", store, "--logits", "--parity-n", 10)
    assert rep["path"] == str(out) and rep["opset"] == 18 and rep["feature_dim"] == 128
    assert rep["parity_crops"] == "given" and rep["parity_n"] == 10 and rep["max_abs_diff"] <= 1e-4
    assert rep["parity_source"] == str(store)  # the flag wins over the checkpoint's training store
    assert rep["intensity"] == {"input_scaling": "minmax", "dtype_max": 65535.0, "crop_rescale": False}
    meta = read_metadata(out)
    assert meta.classes == ("a", "b", "c", "d") and meta.label_column == "Metadata_Treatment"
    assert meta.outputs == ("features", "logits")
    # the exported model on numpy-min-max-scaled raw crops equals PyTorch on the same input
    x = minmax(raw)
    (got,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["features"], {"crops": x})
    np.testing.assert_allclose(got, torch_embed(model, x), atol=1e-4, rtol=0)
    # without --parity-crops: the checkpoint's training store, --parity-n crops of it; once it is gone: random
    rep = _cli_export(ck, "-o", tmp_path / "auto.onnx", "--parity-n", 6)
    assert rep["parity_source"] == str(train_store) and rep["parity_crops"] == "store" and rep["parity_n"] == 6
    assert rep["max_abs_diff"] <= 1e-4
    train_store.rename(tmp_path / "moved")
    with pytest.warns(UserWarning, match=r"best\.pt: data_config\['crops'\] = .*train-crops: the training crop "
                                         r"store is gone"):
        rep = _cli_export(ck, "-o", tmp_path / "gone.onnx", "--parity-n", 6)
    assert rep["parity_source"] == "random" and rep["parity_crops"] == "random" and rep["parity_n"] == 8
    # contradicting the checkpoint's contract is an error naming the field
    with pytest.raises(ValueError, match="crop_size=96 contradicts"):
        export_onnx(ck, tmp_path / "x.onnx", crop_size=96)
    wrong = _crop_store(tmp_path / "wrong", raw, channels=CHANNELS[::-1])
    with pytest.raises(ValueError, match="channels .* differ from the checkpoint"):
        _cli_export(ck, "-o", tmp_path / "y.onnx", "--parity-crops", wrong)
    assert not (tmp_path / "y.onnx").exists()


def test_checkpoint_parity_uses_its_training_crops(tmp_path, real_crops, monkeypatch):
    """Without parity_crops, a checkpoint is compared on the first crops of the store it was trained on, scaled
    as training scaled them (here min-max of raw uint16, computed in numpy); a store that is gone, or a bare
    model, falls back to seeded random crops and the report says so; given crops still win."""
    import warnings

    import phenovec.export.onnx_export as onnx_export
    from phenovec.export.field_model import export_field_model

    seen = []
    real_check = onnx_export.check_parity

    def spy(model, path, crops, **kw):
        seen.append(np.array(crops))
        return real_check(model, path, crops, **kw)

    monkeypatch.setattr(onnx_export, "check_parity", spy)
    model = calibrated("resnet_tiny", real_crops)
    raw = site_raw_crops(12)
    store = _crop_store(tmp_path / "crops", raw)
    ck = _checkpoint(tmp_path, model, crops=str(store))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a store that exists is no fallback: nothing to warn about
        rep = export_onnx(ck, tmp_path / "m.onnx", opset=17, n_store_crops=10)
    assert rep.parity_source == str(store) and rep.parity_crops == "store" and rep.parity.n_crops == 10
    assert rep.max_abs_diff <= 1e-4
    assert seen[-1].dtype == np.float32
    np.testing.assert_allclose(seen[-1], minmax(raw[:10]), atol=1e-6, rtol=0)  # the store's first 10, scaled
    assert rep.parity.reference_max_abs == pytest.approx(np.abs(torch_embed(model, minmax(raw[:10]))).max(),
                                                         rel=1e-5)
    # given crops are used as given, store or not
    rep = export_onnx(ck, tmp_path / "g.onnx", opset=17, parity_crops=real_crops[:3])
    assert rep.parity_source == "given" and rep.parity_crops == "given"
    np.testing.assert_array_equal(seen[-1], real_crops[:3])
    # a crop-trained checkpoint is no field model: its normalisation is per crop (refused, nothing written)
    with pytest.raises(ValueError, match=r"best\.pt: the checkpoint was trained on crops"):
        export_field_model(ck, tmp_path / "f.onnx", channels=None, field_size=2 * BOX, opset=17)
    assert not (tmp_path / "f.onnx").exists()
    # the store gone: seeded random crops, warned about and recorded
    store.rename(tmp_path / "moved")
    with pytest.warns(UserWarning, match="the training crop store is gone"):
        rep = export_onnx(ck, tmp_path / "r.onnx", opset=17)
    assert rep.parity_source == "random" and rep.parity_crops == "random" and rep.parity.n_crops == 8
    np.testing.assert_array_equal(seen[-1], np.random.default_rng(0).random((8, 5, BOX, BOX), dtype=np.float32))
    # a bare model has no store: random, recorded, not warned
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = export_onnx(model, tmp_path / "b.onnx", channels=CHANNELS, crop_size=BOX, intensity=INTENSITY,
                          opset=17)
    assert rep.parity_source == "random" and rep.parity_crops == "random"
    assert export_onnx(model, tmp_path / "n.onnx", channels=CHANNELS, crop_size=BOX, intensity=INTENSITY,
                       opset=17, parity=False).parity_source is None
    # a store at the recorded path that no longer fits the checkpoint is an error naming the key, not noise
    _crop_store(tmp_path / "crops", raw[:, :4], channels=CHANNELS[:4])
    with pytest.raises(ValueError, match=r"best\.pt: data_config\['crops'\] .*crops: channels .* differ"):
        export_onnx(ck, tmp_path / "w.onnx", opset=17)
    assert not (tmp_path / "w.onnx").exists()


@pytest.mark.parametrize("illumination", ["/train/machine/illum", {"P1/DNA": "/train/machine/P1_DNA.npy"}])
def test_crop_steps_of_the_training_store_round_trip(tmp_path, real_crops, illumination):
    """A checkpoint trained on illumination-corrected, masked crops (its data_config's crop_config = the crop
    store's manifest config) exports crop_illumination / crop_mask, never the training machine's paths, and
    profiling reads them back; old metadata without the keys reads as no correction, no mask."""
    from phenovec.export import intensity_from_data_config
    from phenovec.profile import contract_from_metadata

    model = calibrated("resnet_tiny", real_crops)
    cfg = {"channels": CHANNELS, "box_size": BOX, "rescale": False, "illumination": illumination,
           "intensity": None, "mask": "neighbors"}
    ck = _checkpoint(tmp_path, model, crop_config=cfg)
    out = tmp_path / "m.onnx"
    export_onnx(ck, out, opset=17, parity=False)
    want = {"input_scaling": "minmax", "dtype_max": 65535.0, "crop_rescale": False, "crop_illumination": True,
            "crop_mask": "neighbors"}
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["intensity"]) == want and "/train/machine" not in props["intensity"]
    meta = read_metadata(out)
    assert meta.intensity == want
    contract = contract_from_metadata(meta, source=str(out))
    assert contract.crop_illumination is True and contract.crop_mask == "neighbors"
    assert contract.crop_site_args() == (True, {"mask": "neighbors", "dtype": "float32"})
    # a store cut without correction or mask records neither key; an explicit intensity keeps its own values
    plain = intensity_from_data_config({"input_scaling": "minmax", "crop_config": {**cfg, "illumination": None,
                                                                                   "mask": None}})
    assert plain == {"input_scaling": "minmax", "dtype_max": 1.0, "crop_rescale": False}
    assert intensity_from_data_config({"intensity": {"input_scaling": "none", "crop_mask": "object"},
                                       "crop_config": cfg}) == {"input_scaling": "none", "crop_mask": "object",
                                                                "crop_illumination": True}
    old = export_onnx(model, tmp_path / "old.onnx", channels=CHANNELS, crop_size=BOX, opset=17, parity=False,
                      intensity={"input_scaling": "minmax", "dtype_max": 65535.0})
    c = contract_from_metadata(read_metadata(old.path))
    assert c.crop_illumination is False and c.crop_mask is None and "mask" not in c.crop_site_args()[1]
    for key, bad in (("crop_illumination", "yes"), ("crop_mask", "cells")):
        export_onnx(model, tmp_path / "bad.onnx", channels=CHANNELS, crop_size=BOX, opset=17, parity=False,
                    intensity={"input_scaling": "minmax", key: bad})
        with pytest.raises(ValueError, match=rf"bad\.onnx: metadata intensity\.{key} = '{bad}'"):
            contract_from_metadata(read_metadata(tmp_path / "bad.onnx"), source=str(tmp_path / "bad.onnx"))
    # a field model has no illumination step: a checkpoint trained on corrected crops is refused
    from phenovec.export.field_model import export_field_model

    with pytest.raises(ValueError, match=r"best\.pt: the checkpoint was trained on illumination-corrected crops "
                                         r"\(intensity\.crop_illumination = true"):
        export_field_model(ck, tmp_path / "field.onnx", channels=None, field_size=BOX, parity=False)
    assert not (tmp_path / "field.onnx").exists()
