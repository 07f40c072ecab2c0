"""Field-level profiling (MOAProfiler): export_field_model + profile_fields + field_channel_stats against
independent references (tifffile decode, numpy block mean / scaling / standardisation, PyTorch ``model.embed``
or a plain onnxruntime session, numpy median / mean per well); resume, refusals, CLI dispatch."""
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import tifffile
import torch

from conftest import CPJUMP1_FILES, calibrate_batchnorm, shared
from phenovec.export import export_onnx
from phenovec.export.field_model import export_field_model
from phenovec.ingest.index import read_image_index
from phenovec.ingest.synth import synth_plate
from phenovec.io.embeddings import EmbeddingStore
from phenovec.profile import field_channel_stats, profile_fields, profile_sites
from phenovec.train.models import build_model

torch.set_num_threads(1)
CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
WELL = ["Metadata_Plate", "Metadata_Well"]
FACTOR, SIZE = 4, 128


def numpy_fields(paths_per_site, factor: int) -> np.ndarray:
    """sites x C x H/f x W/f float64 block means of tifffile-decoded images."""
    out = []
    for paths in paths_per_site:
        img = np.stack([tifffile.imread(p) for p in paths]).astype(np.float64)
        c, h, w = img.shape
        out.append(img.reshape(c, h // factor, factor, w // factor, factor).mean(axis=(2, 4)))
    return np.stack(out)


def test_cpjump1_field_equals_pytorch(tmp_path):
    d = shared("deepprofiler-cpjump1-site")
    x01 = np.stack([tifffile.imread(d / f) for f in CPJUMP1_FILES.values()]).astype(np.float64) / 65535.0
    assert x01.shape == (5, 1080, 1080)
    mean, std = x01.mean(axis=(1, 2)), x01.std(axis=(1, 2))
    ref_in = ((x01 - mean[:, None, None]) / std[:, None, None]).astype(np.float32)[None]
    model = calibrate_batchnorm(build_model("efficientnet_b0", 5, 7, seed=0), ref_in)
    with torch.no_grad():
        ref = model.embed(torch.from_numpy(ref_in)).numpy()
    index = pd.DataFrame({"Metadata_Plate": ["CPJUMP1"], "Metadata_Well": ["A01"], "Metadata_Site": [1],
                          **{f"FileName_{c}": [str(d / f)] for c, f in CPJUMP1_FILES.items()}})
    onnx_path = tmp_path / "field.onnx"
    rep = export_field_model(model, onnx_path, channels=list(CPJUMP1_FILES), field_size=1080, factor=1,
                             mean=mean.tolist(), std=std.tolist(), parity_crops=ref_in)
    assert rep.crop_size == 1080 and rep.feature_dim == 1280 and rep.parity_crops == "given"
    assert rep.intensity == {"input_scaling": "field", "factor": 1, "field_size": 1080, "dtype_max": 65535.0,
                             "mean": mean.tolist(), "std": std.tolist()}
    assert rep.metadata["input_kind"] == "fields"
    res = profile_fields(onnx_path, index, tmp_path / "out", batch_size=1, workers=1, progress=False)
    st = EmbeddingStore(tmp_path / "out" / "embeddings.zarr")
    x = np.asarray(st.array[:])
    assert res.sites == res.embedded == 1 and x.shape == (1, 1280) and x.dtype == np.float32
    assert np.abs(ref).max() > 0.1 and ref.std() > 0.01  # not degenerate (random-init BN gives ~1e-14)
    print("cpjump1 field: max |ref|", np.abs(ref).max(), "max abs diff", np.abs(x - ref).max())
    np.testing.assert_allclose(x, ref, atol=1e-4, rtol=0)
    med = pd.read_parquet(tmp_path / "out" / "wells_median.parquet")
    np.testing.assert_array_equal(med[[f"feature_{i}" for i in range(1280)]].to_numpy(), x.astype(np.float64))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fields")
    plate = synth_plate(tmp / "plate", plates=2, wells=3, sites_per_well=2, size=SIZE, cells_per_site=(3, 5),
                        progress=False)
    idx = read_image_index(plate["index"], CHANNELS)
    fields01 = numpy_fields(idx.paths, FACTOR) / 65535.0
    mean, std = fields01.mean(axis=(0, 2, 3)), fields01.std(axis=(0, 2, 3))
    inputs = ((fields01 - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
    model = calibrate_batchnorm(build_model("resnet_tiny", 5, 7, seed=0), inputs)
    onnx_path = tmp / "field.onnx"
    export_field_model(model, onnx_path, channels=CHANNELS, field_size=SIZE, factor=FACTOR, mean=mean.tolist(),
                       std=std.tolist())
    return tmp, plate, idx, inputs, onnx_path


def read_outputs(out: Path):
    st = EmbeddingStore(out / "embeddings.zarr")
    return (st.meta, np.asarray(st.array[:]), pd.read_parquet(out / "wells_mean.parquet"),
            pd.read_parquet(out / "wells_median.parquet"))


def assert_same_outputs(a, b):
    for x, y in zip(a, b):
        if isinstance(x, pd.DataFrame):
            pd.testing.assert_frame_equal(x, y)
        else:
            assert x.dtype == y.dtype and np.array_equal(x, y)


def test_synthetic_plate_embeddings_and_wells(setup):
    tmp, plate, idx, inputs, onnx_path = setup
    out = tmp / "run"
    res = profile_fields(onnx_path, plate["index"], out, batch_size=5, workers=2, progress=False)
    assert res.sites == res.cells == res.embedded == 12 and res.resumed_sites == 0
    meta, x, mean, median = read_outputs(out)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = sess.run(["features"], {"crops": inputs})[0]
    assert x.shape == (12, 128) and np.abs(ref).max() > 1e-2
    np.testing.assert_allclose(x, ref, atol=1e-5, rtol=0)  # row order = index order
    pd.testing.assert_frame_equal(meta, idx.sites.reset_index(drop=True))
    attrs = dict(EmbeddingStore(out / "embeddings.zarr").group.attrs)
    assert attrs["mode"] == "fields" and attrs["factor"] == FACTOR and attrs["field_size"] == SIZE
    assert attrs["channels"] == CHANNELS
    feats = [f"feature_{i}" for i in range(128)]
    keys = meta[WELL].astype(str).agg("/".join, axis=1).to_numpy()
    wells = sorted(set(map(tuple, meta[WELL].astype(str).to_numpy())))
    assert [tuple(r) for r in median[WELL].astype(str).to_numpy()] == wells  # sorted by plate, well
    for table, fn in ((median, np.median), (mean, np.mean)):
        for i, (p, w) in enumerate(wells):
            sel = x[keys == f"{p}/{w}"].astype(np.float64)
            np.testing.assert_allclose(table[feats].to_numpy()[i], fn(sel, axis=0), rtol=1e-12, atol=0)
            assert table["Metadata_Object_Count"].iloc[i] == len(sel) == 2
    assert "Metadata_Site" not in median.columns


def test_resume_after_losing_parts_identical(setup):
    tmp, plate, _, _, onnx_path = setup
    out = tmp / "resume"
    profile_fields(onnx_path, plate["index"], out, batch_size=5, workers=1, progress=False)
    first = read_outputs(out)
    for s in (3, 7):
        (out / "parts" / f"site-{s:07d}.npz").unlink()
    (out / "wells" / "well-000001.npz").unlink()
    shutil.rmtree(out / "embeddings.zarr")
    (out / "wells_mean.parquet").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("site-*.npz")}
    res = profile_fields(onnx_path, plate["index"], out, batch_size=5, workers=1, progress=False)
    assert res.resumed_sites == 10
    assert {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("site-*.npz") if p.name in kept} == kept
    assert_same_outputs(read_outputs(out), first)
    with pytest.raises(ValueError, match=r"another configuration.*batch_size"):
        profile_fields(onnx_path, plate["index"], out, batch_size=4, workers=1, progress=False)


def test_refusals(setup, tmp_path):
    tmp, plate, idx, inputs, onnx_path = setup
    # another model into the same OUT
    out = tmp_path / "first"  # a run of its own: the test does not depend on the others having run
    profile_fields(onnx_path, plate["index"], out, batch_size=5, workers=1, progress=False)
    other = tmp_path / "other.onnx"
    export_field_model(calibrate_batchnorm(build_model("resnet_tiny", 5, 7, seed=1), inputs), other, channels=CHANNELS,
                       field_size=SIZE, factor=FACTOR, parity=False)
    with pytest.raises(ValueError, match=r"another configuration.*model_weights_sha256"):
        profile_fields(other, plate["index"], out, batch_size=5, workers=1, progress=False)
    # a single-cell (crops) model
    crops = tmp_path / "crops.onnx"
    export_onnx(build_model("resnet_tiny", 5, 7, seed=0), crops, channels=CHANNELS, crop_size=32,
                intensity={"input_scaling": "minmax", "dtype_max": 65535.0}, parity=False)
    with pytest.raises(ValueError, match=r"crops\.onnx.*input_kind 'crops'.*profile_sites"):
        profile_fields(crops, plate["index"], tmp_path / "o1", progress=False)
    # and the field model is refused by the single-cell pipeline
    with pytest.raises(ValueError, match=r"field\.onnx.*input_kind 'fields'.*profile_fields"):
        profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp_path / "o2", progress=False)
    assert not (tmp_path / "o2").exists()
    # a field of another size: 96 x 96 images -> 24 x 24 after downsampling, the model takes 32 x 32
    rng = np.random.default_rng(0)
    row = {"Metadata_Plate": "P", "Metadata_Well": "A01", "Metadata_Site": 1}
    for c in CHANNELS:
        tifffile.imwrite(tmp_path / f"small_{c}.tif", rng.integers(0, 4000, (96, 96), dtype=np.uint16))
        row[f"FileName_{c}"] = str(tmp_path / f"small_{c}.tif")
    with pytest.raises(ValueError, match=r"small_DNA\.tif.*96 x 96.*128 x 128"):
        profile_fields(onnx_path, pd.DataFrame([row]), tmp_path / "o2", workers=1, progress=False)
    # a model channel the index lacks
    idx4 = read_image_index(plate["index"], channels=["DNA", "ER", "RNA", "AGP"])
    with pytest.raises(ValueError, match=r"\['Mito'\].*matched by name"):
        profile_fields(onnx_path, idx4, tmp_path / "o3", progress=False)
    # metadata recording illumination-corrected training input: field profiling has no such step
    from phenovec.profile.fields import INPUT_KIND, field_intensity

    corrected = tmp_path / "corrected.onnx"
    export_onnx(build_model("resnet_tiny", 5, 7, seed=0), corrected, channels=CHANNELS, crop_size=SIZE // FACTOR,
                intensity={**field_intensity(SIZE, FACTOR), "crop_illumination": True}, input_kind=INPUT_KIND,
                parity=False)
    with pytest.raises(ValueError, match=r"corrected\.onnx: .*intensity\.crop_illumination = true\); field "
                                         "profiling applies no illumination correction"):
        profile_fields(corrected, plate["index"], tmp_path / "o4", progress=False)
    assert not (tmp_path / "o4").exists()


def test_field_channel_stats_equal_numpy(setup):
    _, plate, idx, _, _ = setup
    ref = numpy_fields(idx.paths[:5], FACTOR) / 65535.0
    mean, std = field_channel_stats(plate["index"], CHANNELS, factor=FACTOR, max_sites=5)
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-10)
    # channels matched by name: another order gives the permuted statistics
    m2, s2 = field_channel_stats(plate["index"], CHANNELS[::-1], factor=FACTOR, max_sites=5)
    np.testing.assert_allclose(m2, mean[::-1], rtol=1e-12)
    np.testing.assert_allclose(s2, std[::-1], rtol=1e-12)


def test_cli_dispatch(setup, capsys):
    from phenovec.cli import main

    tmp, plate, _, _, onnx_path = setup
    out = tmp / "cli"
    assert main(["profile", str(onnx_path), "--index", str(plate["index"]), "-o", str(out), "--workers", "1",
                 "--batch-size", "6", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sites"] == summary["cells"] == summary["embedded"] == 12
    assert set(summary["outputs"]) == {"embeddings", "wells_mean", "wells_median"}
    assert EmbeddingStore(out / "embeddings.zarr").array.dtype == np.float32
    capsys.readouterr()
    for flag in (["--locations", str(plate["nuclei"])], ["--edge", "shift"], ["--illumination", str(tmp)]):
        assert main(["profile", str(onnx_path), "--index", str(plate["index"]), "-o", str(out), *flag]) == 2
        assert flag[0] in capsys.readouterr().err  # one line naming the option a field model refuses
    # --micro-batch (fields per onnxruntime call) reaches the sessions and changes no number
    for mb in ("2", "none"):
        assert main(["profile", str(onnx_path), "--index", str(plate["index"]), "-o", str(tmp / f"cli_mb{mb}"),
                     "--workers", "1", "--batch-size", "6", "--micro-batch", mb, "--no-progress"]) == 0
        assert_same_outputs(read_outputs(tmp / f"cli_mb{mb}"), read_outputs(out))
    capsys.readouterr()
    for bad in ("0", "many"):
        with pytest.raises(SystemExit):
            main(["profile", str(onnx_path), "--index", str(plate["index"]), "-o", str(out), "--micro-batch", bad])
        assert "expected auto, none or an integer >= 1" in capsys.readouterr().err


def _field_checkpoint(path, model, mean=None, std=None, **extra):
    """A field-trained checkpoint (data_config of ``phenovec train`` with data.fields) with the dtype_max rule."""
    from phenovec.profile.fields import field_intensity
    from phenovec.train.checkpoint import save_checkpoint

    inten = field_intensity(SIZE, FACTOR, 65535.0, mean, std, trained_on="fields")
    dc = {"channels": CHANNELS, "box_size": SIZE // FACTOR, "input_scaling": "field", "dtype_max": 65535.0,
          "intensity": inten, "source": "fields", **extra}
    return save_checkpoint({"model_config": model.config, "model_state": model.state_dict(), "data_config": dc},
                           path)


def test_export_from_checkpoint_and_distributed_run_identical(setup, tmp_path):
    """A field-trained checkpoint (same weights as the setup model) exported as a field model gives the same
    weights hash and, profiled on a tcp LocalCluster, the same outputs as the bare-model export profiled in
    threads; channels or statistics contradicting its data_config, and a crop-trained checkpoint, are refused."""
    from distributed import LocalCluster

    from phenovec.runtime import read_metadata
    from phenovec.train.checkpoint import save_checkpoint

    tmp, plate, _, inputs, onnx_path = setup
    model = calibrate_batchnorm(build_model("resnet_tiny", 5, 7, seed=0), inputs)
    base = read_metadata(onnx_path)
    classes = [f"t{i}" for i in range(7)]
    ck = _field_checkpoint(tmp_path / "best.pt", model, base.intensity["mean"], base.intensity["std"],
                           classes=classes, label_column="Metadata_Treatment")
    with pytest.raises(ValueError, match=r"best\.pt.*channels"):
        export_field_model(ck, tmp_path / "bad.onnx", channels=CHANNELS[::-1])
    with pytest.raises(ValueError, match=r"best\.pt: mean= differs from the channel statistics"):
        export_field_model(ck, tmp_path / "bad.onnx", channels=None, mean=[0.0] * 5, std=[1.0] * 5)
    crop = save_checkpoint({"model_config": model.config, "model_state": model.state_dict(),
                            "data_config": {"channels": CHANNELS, "box_size": 48, "input_scaling": "minmax",
                                            "dtype_max": 65535.0}}, tmp_path / "crop.pt")
    with pytest.raises(ValueError, match=r"crop\.pt: the checkpoint was trained on crops"):
        export_field_model(crop, tmp_path / "bad.onnx", channels=None, field_size=SIZE, factor=FACTOR)
    assert not (tmp_path / "bad.onnx").exists()
    rep = export_field_model(ck, tmp_path / "ck.onnx", channels=None, field_size=SIZE, factor=FACTOR,
                             mean=base.intensity["mean"], std=base.intensity["std"])
    meta = read_metadata(tmp_path / "ck.onnx")
    assert meta.weights_sha256 == base.weights_sha256 and meta.classes == tuple(classes)
    assert meta.crop_size == SIZE // FACTOR and meta.input_kind == "fields"
    assert meta.intensity == {**base.intensity, "trained_on": "fields"}
    assert rep.parity_crops == "random" and rep.max_abs_diff <= 1e-4
    profile_fields(onnx_path, plate["index"], tmp_path / "thr", batch_size=5, scheduler="threads", workers=1,
                   progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, host="127.0.0.1", protocol="tcp",
                      dashboard_address=None) as cluster:
        profile_fields(tmp_path / "ck.onnx", plate["index"], tmp_path / "dist", batch_size=5,
                       scheduler=cluster.scheduler_address, max_in_flight=2, progress=False)
    assert_same_outputs(read_outputs(tmp_path / "thr"), read_outputs(tmp_path / "dist"))


def test_cli_export_fields_with_statistics(setup, tmp_path, capsys):
    """`phenovec export CKPT --fields --field-stats INDEX` of a field checkpoint that records no statistics: they
    equal numpy's over every field, the metadata says fields, and it has the bare-model export's weights; a
    checkpoint that records its statistics refuses --field-stats, another --field-size is refused."""
    from phenovec.cli import main
    from phenovec.runtime import read_metadata

    tmp, plate, _, inputs, onnx_path = setup
    model = calibrate_batchnorm(build_model("resnet_tiny", 5, 7, seed=0), inputs)
    ck = _field_checkpoint(tmp_path / "best.pt", model)
    out = tmp_path / "cli.onnx"
    assert main(["export", str(ck), "--fields", "--field-size", str(SIZE), "--factor", str(FACTOR),
                 "--field-stats", str(plate["index"]), "-o", str(out)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["input_kind"] == "fields" and rep["crop_size"] == SIZE // FACTOR and rep["max_abs_diff"] <= 1e-4
    base, got = read_metadata(onnx_path), read_metadata(out)
    np.testing.assert_allclose(got.intensity["mean"], base.intensity["mean"], rtol=1e-9)
    np.testing.assert_allclose(got.intensity["std"], base.intensity["std"], rtol=1e-9)
    assert got.weights_sha256 == base.weights_sha256
    stats = _field_checkpoint(tmp_path / "stats.pt", model, got.intensity["mean"], got.intensity["std"])
    for path, extra, msg in ((stats, ["--field-stats", str(plate["index"])], "leave --field-stats out"),
                             (ck, ["--field-size", "64"], "field_size=64 differs"),
                             (ck, ["--probabilities"], "--probabilities")):
        assert main(["export", str(path), "--fields", *extra, "-o", str(tmp_path / "x.onnx")]) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_multipage_frames_equal_single_page_files(setup):
    """An index whose channels are pages of one multi-page TIFF per site (``Frame_<channel>``, pages in reverse
    channel order) gives the same field embeddings as the one-file-per-channel index."""
    tmp, plate, idx, inputs, onnx_path = setup
    root = tmp / "multipage"
    root.mkdir()
    index = pd.read_csv(plate["index"])
    src = Path(plate["index"]).parent
    pages = list(reversed(CHANNELS))
    for i, row in index.iterrows():
        name = f"site{i}.tif"
        tifffile.imwrite(root / name, np.stack([tifffile.imread(src / row[f"FileName_{c}"]) for c in pages]),
                         compression="zlib")
        for c in CHANNELS:
            index.loc[i, f"FileName_{c}"] = name
            index.loc[i, f"Frame_{c}"] = pages.index(c)
    index[[f"Frame_{c}" for c in CHANNELS]] = index[[f"Frame_{c}" for c in CHANNELS]].astype(int)
    index.to_csv(root / "index.csv", index=False)
    res = profile_fields(onnx_path, root / "index.csv", tmp / "multipage_out", batch_size=5, workers=1,
                         progress=False)
    assert res.embedded == 12
    got = np.asarray(EmbeddingStore(tmp / "multipage_out" / "embeddings.zarr").array[:])
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, sess.run(["features"], {"crops": inputs})[0], atol=1e-5, rtol=0)
