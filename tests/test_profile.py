"""phenovec.profile: embeddings of a synthetic plate from images + locations (and from a crop store) against an
independent reference (tifffile + numpy crop + numpy min-max + a plain onnxruntime session), per-well profiles
against pandas groupby of the stored embeddings, threaded vs distributed (LocalCluster on loopback) identity,
channel matching by name.
"""
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import tifffile
import torch

from conftest import calibrate_batchnorm
from phenovec.export import export_onnx
from phenovec.ingest.index import read_image_index
from phenovec.ingest.synth import synth_plate
from phenovec.io.embeddings import EmbeddingStore
from phenovec.profile import profile_sites
from phenovec.runtime import read_metadata
from phenovec.train.models import build_model

torch.set_num_threads(1)
CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
BOX = 32
INTENSITY = {"input_scaling": "minmax", "dtype_max": 65535.0}
KEYS = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]


def reference_site(index_row: pd.Series, root: Path, loc: pd.DataFrame, channels=CHANNELS):
    """(kept mask, minmax crops of kept cells): tifffile decode, numpy crop (top-left = floor(c + .5) - box//2,
    a box not wholly inside is dropped), per-crop per-channel min-max in float64."""
    img = np.stack([tifffile.imread(root / index_row[f"FileName_{c}"]) for c in channels]).astype(np.float64)
    h, w = img.shape[1:]
    kept, crops = [], []
    for x, y in zip(loc["Nuclei_Location_Center_X"], loc["Nuclei_Location_Center_Y"]):
        r0, c0 = int(np.floor(y + 0.5)) - BOX // 2, int(np.floor(x + 0.5)) - BOX // 2
        ok = 0 <= r0 and 0 <= c0 and r0 + BOX <= h and c0 + BOX <= w
        kept.append(ok)
        if ok:
            crop = img[:, r0:r0 + BOX, c0:c0 + BOX]
            lo, hi = crop.min(axis=(1, 2), keepdims=True), crop.max(axis=(1, 2), keepdims=True)
            crops.append(np.where(hi > lo, (crop - lo) / np.where(hi > lo, hi - lo, 1), 0))
    return np.array(kept, bool), np.array(crops, np.float32).reshape(-1, len(channels), BOX, BOX)


def reference_embeddings(plate: dict, onnx_path: Path):
    """(edge kept per cell, features of kept cells) in index order / location order, via plain onnxruntime."""
    index = pd.read_csv(plate["index"])
    nuclei = pd.read_csv(plate["nuclei"])
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    kept_all, feats = [], []
    for _, row in index.iterrows():
        loc = nuclei[(nuclei[KEYS].astype(str) == row[KEYS].astype(str).to_numpy()).all(axis=1)]
        kept, crops = reference_site(row, Path(plate["index"]).parent, loc)
        kept_all.append(kept)
        if len(crops):
            feats.append(sess.run(["features"], {"crops": crops})[0])
    return np.concatenate(kept_all), np.concatenate(feats)


def calibrated_model(plate: dict, channels=CHANNELS, seed: int = 0):
    """resnet_tiny (7 classes) whose BatchNorm statistics come from real synthetic crops (random-init BN would
    give near-constant features, which a 1e-4 comparison could not tell apart)."""
    index = pd.read_csv(plate["index"])
    nuclei = pd.read_csv(plate["nuclei"])
    row = index.iloc[0]
    loc = nuclei[(nuclei[KEYS].astype(str) == row[KEYS].astype(str).to_numpy()).all(axis=1)]
    _, crops = reference_site(row, Path(plate["index"]).parent, loc)
    return calibrate_batchnorm(build_model("resnet_tiny", len(channels), 7, seed=seed), crops)


def make_plate_and_model(tmp: Path, channels=CHANNELS, seed: int = 0):
    plate = synth_plate(tmp / "plate", plates=1, wells=6, sites_per_well=2, size=128, cells_per_site=(8, 12),
                        progress=False)
    model = calibrated_model(plate, seed=seed)
    onnx_path = tmp / f"model{seed}.onnx"
    export_onnx(model, onnx_path, channels=channels, crop_size=BOX, intensity=INTENSITY)
    return plate, onnx_path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("profile")
    plate, onnx_path = make_plate_and_model(tmp)
    return tmp, plate, onnx_path


def read_outputs(out: Path):
    st = EmbeddingStore(out / "embeddings.zarr")
    return (st.meta, np.asarray(st.array[:]), pd.read_parquet(out / "cells.parquet"),
            pd.read_parquet(out / "wells_mean.parquet"), pd.read_parquet(out / "wells_median.parquet"))


def assert_same_outputs(a: Path, b: Path) -> None:
    ma, xa, ca, mea, meda = read_outputs(a)
    mb, xb, cb, meb, medb = read_outputs(b)
    assert xa.dtype == xb.dtype and np.array_equal(xa, xb)
    pd.testing.assert_frame_equal(ma, mb)
    pd.testing.assert_frame_equal(ca, cb)
    pd.testing.assert_frame_equal(mea, meb)
    pd.testing.assert_frame_equal(meda, medb)


def test_embeddings_equal_reference(setup):
    tmp, plate, onnx_path = setup
    res = profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp / "f32", dtype="float32", batch_size=16,
                        workers=2, progress=False)
    kept, ref = reference_embeddings(plate, onnx_path)
    meta, x, cells, _, _ = read_outputs(tmp / "f32")
    nuclei = pd.read_csv(plate["nuclei"])
    assert res.cells == len(nuclei) == len(cells) and res.embedded == int(kept.sum()) == len(x)
    assert 0 < kept.sum() < len(kept)  # some cells dropped at the border, some kept
    np.testing.assert_array_equal(cells["edge"].to_numpy() == "inside", kept)
    np.testing.assert_array_equal(cells["row"].to_numpy() >= 0, kept)
    assert x.dtype == np.float32 and x.shape == (kept.sum(), 128)
    # a store smaller than one chunk is one chunk of at most the located cells (no encoded padding)
    assert EmbeddingStore(tmp / "f32" / "embeddings.zarr").array.chunks == (len(nuclei), 128)
    assert np.abs(ref).max() > 1e-2  # features are not degenerate
    np.testing.assert_allclose(x, ref, atol=1e-4, rtol=0)
    # the cell table follows the locations: same cells, same order
    np.testing.assert_array_equal(cells["ObjectNumber"].to_numpy(), nuclei["ObjectNumber"].to_numpy())
    np.testing.assert_array_equal(cells["x"].to_numpy(), nuclei["Nuclei_Location_Center_X"].to_numpy())
    np.testing.assert_array_equal(meta["ObjectNumber"].to_numpy(), nuclei["ObjectNumber"].to_numpy()[kept])
    assert (meta[KEYS].astype(str).to_numpy() == nuclei[KEYS].astype(str).to_numpy()[kept]).all()


def test_float16_wells_equal_pandas_groupby(setup, monkeypatch):
    import phenovec.profile.wells as wells_mod

    monkeypatch.setattr(wells_mod, "WELL_ROW_GROUP", 4)  # 6 wells: the tables are built from blocks of 4 and 2
    tmp, plate, onnx_path = setup
    out = tmp / "f16"
    profile_sites(onnx_path, plate["index"], plate["nuclei"], out, batch_size=16, workers=2, progress=False)
    meta, x, _, mean, median = read_outputs(out)
    ref32 = read_outputs(tmp / "f32")[1] if (tmp / "f32").exists() else None
    assert x.dtype == np.float16
    if ref32 is not None:
        np.testing.assert_array_equal(x, ref32.astype(np.float16))
    feats = [f"feature_{i}" for i in range(x.shape[1])]
    df = pd.concat([meta[["Metadata_Plate", "Metadata_Well"]], pd.DataFrame(x.astype(np.float64), columns=feats)],
                   axis=1)
    g = df.groupby(["Metadata_Plate", "Metadata_Well"], sort=True)
    for table, ref in ((mean, g.mean()), (median, g.median())):
        ref = ref.reset_index()
        assert list(table.columns[:2]) == ["Metadata_Plate", "Metadata_Well"]
        assert list(table.columns[-len(feats):]) == feats
        assert "Metadata_Site" not in table.columns and "Metadata_Treatment" in table.columns
        np.testing.assert_array_equal(table[["Metadata_Plate", "Metadata_Well"]].to_numpy(),
                                      ref[["Metadata_Plate", "Metadata_Well"]].to_numpy())
        np.testing.assert_allclose(table[feats].to_numpy(), ref[feats].to_numpy(), rtol=1e-12, atol=0)
        np.testing.assert_array_equal(table["Metadata_Object_Count"].to_numpy(), g.size().to_numpy())
    index = pd.read_csv(plate["index"]).drop_duplicates(["Metadata_Plate", "Metadata_Well"])
    merged = mean.merge(index, on=["Metadata_Plate", "Metadata_Well"], suffixes=("", "_index"))
    assert (merged["Metadata_Treatment"] == merged["Metadata_Treatment_index"]).all()


def test_threaded_and_distributed_identical(setup):
    from distributed import LocalCluster

    tmp, plate, onnx_path = setup
    profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp / "thr", scheduler="threads", workers=1,
                  batch_size=16, progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, host="127.0.0.1", protocol="tcp",
                      dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp / "dist", scheduler=cluster.scheduler_address,
                      batch_size=16, max_in_flight=2, progress=False)
    assert_same_outputs(tmp / "thr", tmp / "dist")


def test_channels_matched_by_name(setup):
    tmp, plate, onnx_path = setup
    # an ImageIndex read with the channels in another order gives the same output (matched by name)
    idx = read_image_index(plate["index"], channels=["Mito", "AGP", "DNA", "RNA", "ER"])
    profile_sites(onnx_path, idx, plate["nuclei"], tmp / "reordered", workers=1, batch_size=16, progress=False)
    profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp / "ordered", workers=1, batch_size=16,
                  progress=False)
    assert_same_outputs(tmp / "ordered", tmp / "reordered")
    # an index without one of the model's channels: a clear error naming it
    idx4 = read_image_index(plate["index"], channels=["DNA", "ER", "RNA", "AGP"])
    with pytest.raises(ValueError, match=r"\['Mito'\].*matched by name"):
        profile_sites(onnx_path, idx4, plate["nuclei"], tmp / "bad1", progress=False)


def test_model_channel_missing_from_index(setup, tmp_path):
    _, plate, _ = setup
    model = build_model("resnet_tiny", 5, 7).eval()
    onnx_path = tmp_path / "actin.onnx"
    export_onnx(model, onnx_path, channels=["DNA", "ER", "RNA", "Actin", "Mito"], crop_size=BOX,
                intensity=INTENSITY)
    with pytest.raises(ValueError, match="Actin"):
        profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "embeddings.zarr").exists()


def test_from_crop_store_equals_from_images(setup):
    from phenovec.ingest.crop import crop_index

    tmp, plate, onnx_path = setup
    idx = read_image_index(plate["index"], channels=["ER", "DNA", "RNA", "AGP", "Mito"])  # other order: by name
    crop_index(idx, plate["nuclei"], tmp / "crops", box_size=BOX, edge="drop", chunk_cells=16, progress=False)
    res = profile_sites(onnx_path, crops_dir=tmp / "crops", out=tmp / "from_crops", dtype="float32", batch_size=16,
                        workers=1, progress=False)
    if not (tmp / "f32").exists():
        profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp / "f32", dtype="float32", batch_size=16,
                      workers=2, progress=False)
    mc, xc, cc, _, _ = read_outputs(tmp / "from_crops")
    mi, xi, ci, _, _ = read_outputs(tmp / "f32")
    assert res.embedded == len(xi)
    np.testing.assert_allclose(xc, xi, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(cc["edge"].astype(str).to_numpy(), ci["edge"].astype(str).to_numpy())
    np.testing.assert_array_equal(mc["ObjectNumber"].to_numpy(), mi["ObjectNumber"].to_numpy())
    m48 = tmp / "m48.onnx"
    export_onnx(build_model("resnet_tiny", 5, 7).eval(), m48, channels=CHANNELS, crop_size=48, intensity=INTENSITY)
    with pytest.raises(ValueError, match="box_size 32 != the model's crop_size 48"):
        profile_sites(m48, crops_dir=tmp / "crops", out=tmp / "bad48", progress=False)


def test_worker_sessions_per_thread_on_cpu_shared_on_gpu(setup, monkeypatch):
    """The threaded scheduler on the CPU gives each Dask thread its own session (cores / threads onnxruntime
    threads, runs not serialised); a GPU provider keeps one shared exclusive session per process."""
    from concurrent.futures import ThreadPoolExecutor

    from phenovec.profile import sites

    from phenovec.runtime import read_metadata

    tmp, plate, onnx_path = setup
    sha = read_metadata(onnx_path).weights_sha256
    ref = sites.run_model_ref(str(onnx_path), sha, ["CPUExecutionProvider"], 1, True)
    assert ref.per_thread and ref.intra_op_threads == 1
    import threading

    both = threading.Barrier(2, timeout=60)  # every task waits for one on the other thread: both threads take part

    def session_id(_):
        sid = id(sites.worker_session(ref))
        both.wait()
        return sid

    with ThreadPoolExecutor(2) as pool:
        a = list(pool.map(session_id, range(8)))
    assert len(set(a)) == 2  # one per thread, reused within a thread
    s = sites.worker_session(ref)
    assert s is sites.worker_session(ref) and s._lock is None
    # a scheduler that allows no per-thread sessions (processes / an external cluster): one session per process
    shared = sites.run_model_ref(str(onnx_path), sha, ["CPUExecutionProvider"], 2, False)
    assert not shared.per_thread and shared.intra_op_threads == 2
    with ThreadPoolExecutor(2) as pool:
        b = set(pool.map(lambda _: id(sites.worker_session(shared)), range(4)))
    assert len(b) == 1 and sites.worker_session(shared)._lock is not None
    # auto providers on a (stubbed) CUDA build: shared, onnxruntime's default threads
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    gpu = sites.run_model_ref(str(onnx_path), sha, "auto", 1, True)
    assert not gpu.per_thread and gpu.intra_op_threads is None
    with pytest.raises(ValueError, match="weights_sha256"):
        sites.worker_session(sites.ModelRef(str(onnx_path), "0" * 64, ["CPUExecutionProvider"], 1, True))


def test_micro_batches_change_no_number(setup, monkeypatch):
    """Splitting each batch of 16 into onnxruntime calls of 3 crops gives the same bytes as one call per batch,
    and the worker sessions do split (the micro-batch reaches them)."""
    from phenovec.runtime import session

    tmp, plate, onnx_path = setup
    sizes = []
    orig = session.ProfileSession._run_call
    monkeypatch.setattr(session.ProfileSession, "_run_call",
                        lambda self, x, names: sizes.append(len(x)) or orig(self, x, names))
    profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp / "mb3", batch_size=16, workers=2,
                  micro_batch=3, progress=False)
    assert sizes and max(sizes) == 3
    sizes.clear()
    profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp / "mb_none", batch_size=16, workers=2,
                  micro_batch=None, progress=False)
    assert max(sizes) > 3
    assert_same_outputs(tmp / "mb3", tmp / "mb_none")
    # a bad micro_batch is refused before a cluster starts or any output is written
    for bad in (0, "big"):
        with pytest.raises(ValueError, match="micro_batch must be 'auto', None or an integer >= 1"):
            profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp / "mb_bad", micro_batch=bad,
                          progress=False)
        assert not (tmp / "mb_bad").exists()



def test_site_groups_cut_into_one_reused_buffer(setup, monkeypatch):
    """Float32 contracts: a group's sites are cut one after another into the thread's crop buffer, so its crops
    are one block (a view of the buffer) equal bit for bit to each site cut on its own; the next group reuses the
    buffer (a smaller one as it is, stale contents never showing; a larger one grows it); features equal those
    of per-site blocks (the path of integer contracts) bit for bit."""
    from concurrent.futures import ThreadPoolExecutor

    from phenovec.profile import sites
    from phenovec.profile.contract import InputContract, contract_from_metadata
    from phenovec.runtime import read_metadata

    tmp, plate, onnx_path = setup
    meta = read_metadata(onnx_path)
    contract = contract_from_metadata(meta)
    assert contract.cuts_float32
    index, nuclei, root = pd.read_csv(plate["index"]), pd.read_csv(plate["nuclei"]), Path(plate["index"]).parent
    jobs = []
    for i, row in index.iterrows():
        loc = nuclei[(nuclei[KEYS].astype(str) == row[KEYS].astype(str).to_numpy()).all(axis=1)]
        jobs.append(sites.SiteJob(i, tuple(str(root / row[f"FileName_{c}"]) for c in CHANNELS),
                                  loc["Nuclei_Location_Center_X"].to_numpy(), loc["Nuclei_Location_Center_Y"].to_numpy()))

    def check(group):
        codes, blocks = sites.cut_group(group, contract, "drop")
        assert len(blocks) == 1 and np.shares_memory(blocks[0], sites._THREAD.crops)
        fresh = [sites.cut_site(j, contract, "drop") for j in group]
        for c, (fc, _) in zip(codes, fresh):
            np.testing.assert_array_equal(c, fc)
        want = np.concatenate([x for _, x in fresh])
        assert blocks[0].shape == want.shape and 0 < len(want) < sum(len(j.xs) for j in group)  # some dropped
        np.testing.assert_array_equal(blocks[0].view(np.uint32), want.view(np.uint32))
        return sites._THREAD.crops

    def in_one_thread():
        first = check(jobs[:4])
        first.fill(np.nan)  # what a finished group leaves is never read
        assert check(jobs[4:5]) is first  # smaller: the same buffer
        grown = check(jobs)
        assert grown is not first and grown.size > first.size
        ref = sites.run_model_ref(str(onnx_path), meta.weights_sha256, ["CPUExecutionProvider"], 1, True)
        return sites.embed_site_group(ref, contract, jobs[:5], "drop", 16, "float32")

    with ThreadPoolExecutor(1) as pool:  # a fresh thread: no buffer yet
        got = pool.submit(in_one_thread).result()
    monkeypatch.setattr(InputContract, "cuts_float32", property(lambda self: False))
    with ThreadPoolExecutor(1) as pool:
        ref = sites.run_model_ref(str(onnx_path), meta.weights_sha256, ["CPUExecutionProvider"], 1, True)
        want = pool.submit(sites.embed_site_group, ref, contract, jobs[:5], "drop", 16, "float32").result()
        assert pool.submit(lambda: getattr(sites._THREAD, "crops", None)).result() is None  # per-site blocks
    assert [s for s, _, _ in got] == [s for s, _, _ in want] == list(range(5))
    for (_, ca, fa), (_, cb, fb) in zip(got, want):
        np.testing.assert_array_equal(ca, cb)
        assert fa.shape[0] == int((ca <= 2).sum())
        np.testing.assert_array_equal(fa.view(np.uint32), fb.view(np.uint32))
    # a contract whose model input were not the float32 cut itself would leave raw crops in the block: refused
    monkeypatch.setattr(InputContract, "cuts_float32", property(lambda self: True))
    monkeypatch.setattr(InputContract, "model_input_from_cut", lambda self, crops: np.array(crops, copy=True))
    with pytest.raises(RuntimeError, match="model input of site 0 is not the crops cut into the buffer"):
        sites.cut_group(jobs[:1], contract, "drop")


# ---------------------------------------------------------------------------------------------------------------
# the crop steps and input rules training recorded, applied from images: each model is the setup's network
# exported with the intensity contract a training run on a `phenovec crop` store records (train.loop's
# data_config -> intensity_from_data_config), and its embeddings from images must equal those from that store


def store_model(plate: dict, store: Path, path: Path) -> Path:
    """The setup's network exported with the contract of a model trained on ``store`` (rule and dtype_max as
    ``phenovec.train`` picks them, crop steps from the store's manifest)."""
    from phenovec.export.checkpoint import intensity_from_data_config
    from phenovec.train.data import input_scaling, open_crops

    crops = open_crops(store)
    dtype_max = float(np.iinfo(crops.dtype).max) if np.issubdtype(crops.dtype, np.integer) else 1.0
    intensity = intensity_from_data_config({"input_scaling": input_scaling(crops), "dtype_max": dtype_max,
                                            "crop_config": crops.manifest["config"]})
    export_onnx(calibrated_model(plate), path, channels=CHANNELS, crop_size=BOX, intensity=intensity, parity=False)
    return path


def assert_images_equal_store(onnx_path: Path, index, plate: dict, store: Path, tmp: Path, name: str, **kw):
    """Profile ``index`` (images) and ``store`` (its crops) with ``onnx_path``; the same cells, equal embeddings.
    Returns the embeddings from images."""
    profile_sites(onnx_path, index, plate["nuclei"], tmp / f"{name}_images", dtype="float32", batch_size=16,
                  workers=2, progress=False, **kw)
    profile_sites(onnx_path, crops_dir=store, out=tmp / f"{name}_store", dtype="float32", batch_size=16, workers=1,
                  progress=False)
    mi, xi, ci, _, _ = read_outputs(tmp / f"{name}_images")
    ms, xs, cs, _, _ = read_outputs(tmp / f"{name}_store")
    np.testing.assert_array_equal(ci["edge"].astype(str).to_numpy(), cs["edge"].astype(str).to_numpy())
    np.testing.assert_array_equal(mi["ObjectNumber"].to_numpy(), ms["ObjectNumber"].to_numpy())
    assert len(xi) > 0 and np.abs(xi).max() > 1e-2
    np.testing.assert_allclose(xi, xs, atol=2e-5, rtol=0)
    return xi


def unscaled_reference(setup) -> np.ndarray:
    """Embeddings of the setup's model (minmax, no crop steps) from images, to show a step changed something."""
    tmp, plate, onnx_path = setup
    if not (tmp / "f32").exists():
        profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp / "f32", dtype="float32", batch_size=16,
                      workers=2, progress=False)
    return read_outputs(tmp / "f32")[1]


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_scale_rule_from_images_equals_store(setup, dtype):
    """input_scaling "scale": crops cut as uint8 / uint16 after the per-crop rescale, divided by dtype_max."""
    import phenovec

    tmp, plate, _ = setup
    store = tmp / f"crops_{dtype}"
    phenovec.crop(read_image_index(plate["index"], CHANNELS), plate["nuclei"], store, box_size=BOX, edge="drop",
                  rescale=True, dtype=dtype, chunk_cells=16, progress=False)
    onnx_path = store_model(plate, store, tmp / f"scale_{dtype}.onnx")
    dtype_max = 255.0 if dtype == "uint8" else 65535.0
    assert read_metadata(onnx_path).intensity == {"input_scaling": "scale", "dtype_max": dtype_max,
                                                  "crop_rescale": True}
    x = assert_images_equal_store(onnx_path, plate["index"], plate, store, tmp, f"scale_{dtype}")
    if dtype == "uint8":  # quantised to 256 levels: not the float minmax input
        assert np.abs(x - unscaled_reference(setup)).max() > 1e-3


def test_none_rule_with_crop_intensity_from_images_equals_store(setup):
    """input_scaling "none": float32 crops used as stored, here after a per-image percentile rescale."""
    import phenovec

    tmp, plate, _ = setup
    store = tmp / "crops_pct"
    phenovec.crop(read_image_index(plate["index"], CHANNELS), plate["nuclei"], store, box_size=BOX, edge="drop",
                  intensity=("percentile", 1.0, 99.0), chunk_cells=16, progress=False)
    onnx_path = store_model(plate, store, tmp / "none_pct.onnx")
    assert read_metadata(onnx_path).intensity == {"input_scaling": "none", "dtype_max": 1.0, "crop_rescale": False,
                                                  "crop_intensity": ["percentile", 1.0, 99.0]}
    x = assert_images_equal_store(onnx_path, plate["index"], plate, store, tmp, "none_pct")
    assert np.abs(x - unscaled_reference(setup)).max() > 1e-3


@pytest.fixture(scope="module")
def illum(setup):
    """Flat fields of the setup's plate (``phenovec illum``), a store cut with them (+ per-crop rescale: float32
    crops, rule "none") and the model trained on it (metadata ``crop_illumination``)."""
    import phenovec
    from phenovec.ingest.illumination import compute_illumination

    tmp, plate, _ = setup
    idx = read_image_index(plate["index"], CHANNELS)
    compute_illumination(idx, tmp / "illum", progress=False)
    store = tmp / "crops_illum"
    phenovec.crop(idx, plate["nuclei"], store, box_size=BOX, edge="drop", rescale=True, chunk_cells=16,
                  illumination=tmp / "illum", progress=False)
    onnx_path = store_model(plate, store, tmp / "illum.onnx")
    return tmp / "illum", store, onnx_path


def test_illumination_from_images_equals_store(setup, illum):
    tmp, plate, _ = setup
    folder, store, onnx_path = illum
    inten = read_metadata(onnx_path).intensity
    assert inten["crop_illumination"] is True and "crop_mask" not in inten
    assert str(folder) not in json.dumps(inten)  # the training machine's paths are not recorded
    x = assert_images_equal_store(onnx_path, plate["index"], plate, store, tmp, "illum", illumination=folder)
    # the flat fields change the crops (the synthetic plate has a gradient + vignetting illumination field)
    assert np.abs(x - unscaled_reference(setup)).max() > 1e-3
    attrs = EmbeddingStore(tmp / "illum_images" / "embeddings.zarr").group.attrs
    files = attrs["illumination_files"][str(pd.read_csv(plate["index"])["Metadata_Plate"][0])]
    assert [f["channel"] for f in files] == CHANNELS and all(len(f["sha256"]) == 64 for f in files)


def test_illumination_refusals(setup, illum):
    """Each mismatch is refused before any output, naming the model file and the metadata key."""
    import phenovec

    tmp, plate, plain = setup
    folder, store, onnx_path = illum
    with pytest.raises(ValueError, match=rf"{onnx_path.name}: .*intensity\.crop_illumination = true.*illumination="):
        profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp / "r1", progress=False)
    with pytest.raises(ValueError, match=rf"{plain.name}: .*without illumination correction.*crop_illumination "
                                         "absent or false"):
        profile_sites(plain, plate["index"], plate["nuclei"], tmp / "r2", illumination=folder, progress=False)
    with pytest.raises(ValueError, match="illumination applies to images"):
        profile_sites(onnx_path, crops_dir=store, out=tmp / "r3", illumination=folder, progress=False)
    # crop stores: corrected or not must be the model's (the stores and models differ only in that)
    raw = tmp / "crops_rescaled"
    phenovec.crop(read_image_index(plate["index"], CHANNELS), plate["nuclei"], raw, box_size=BOX, edge="drop",
                  rescale=True, chunk_cells=16, progress=False)
    raw_model = store_model(plate, raw, tmp / "rescaled.onnx")
    profile_sites(raw_model, crops_dir=raw, out=tmp / "r_ok", workers=1, progress=False)
    with pytest.raises(ValueError, match=r"crop store .*crops_illum: crops made with illumination correction "
                                         r".*model .*rescaled\.onnx was trained on crops without it \(metadata "
                                         r"intensity\.crop_illumination = false\)"):
        profile_sites(raw_model, crops_dir=store, out=tmp / "r4", progress=False)
    with pytest.raises(ValueError, match=r"crops made without illumination correction but the model "
                                         r".*illum\.onnx was trained on crops with it \(metadata "
                                         r"intensity\.crop_illumination = true\)"):
        profile_sites(onnx_path, crops_dir=raw, out=tmp / "r5", progress=False)
    assert not any((tmp / f"r{i}").exists() for i in range(1, 6))


def test_resume_refused_with_other_flat_fields(setup, illum, tmp_path):
    """The flat fields' sha256 are the run's configuration: the same files through a mapping resume the run,
    changed ones are refused; a worker whose file differs from the run's hash refuses it."""
    import shutil

    from phenovec.profile import sites

    tmp, plate, _ = setup
    folder, _, onnx_path = illum
    out = tmp_path / "run"
    first = profile_sites(onnx_path, plate["index"], plate["nuclei"], out, illumination=folder, batch_size=16,
                          workers=1, progress=False)
    plate_name = str(pd.read_csv(plate["index"])["Metadata_Plate"][0])
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    mapping = {(plate_name, c): copy / plate_name / f"{plate_name}_{c}.npy" for c in CHANNELS}
    again = profile_sites(onnx_path, plate["index"], plate["nuclei"], out, illumination=mapping, batch_size=16,
                          workers=1, progress=False)
    assert again.resumed_sites == first.sites
    f = copy / plate_name / f"{plate_name}_ER.npy"
    np.save(f, np.load(f) * np.float32(1.01))
    with pytest.raises(ValueError, match=r"another configuration \(differs in \['illumination'\]"):
        profile_sites(onnx_path, plate["index"], plate["nuclei"], out, illumination=mapping, batch_size=16,
                      workers=1, progress=False)
    ref = sites.FlatFieldRef(folder, tuple(CHANNELS), {plate_name: ("0" * 64,) * len(CHANNELS)})
    with pytest.raises(ValueError, match=rf"{plate_name}_DNA.npy: the flat field of plate .* changed"):
        sites.worker_flat_field(ref, plate_name)


def labelled_index(plate: dict, radius: float = 9.0) -> Path:
    """The plate's index with a ``FileName_Labels`` column: per site a uint16 label image in which each pixel
    within ``radius`` of a nucleus centre carries the nearest nucleus's ObjectNumber (0 elsewhere)."""
    root = Path(plate["index"]).parent
    index, nuclei = pd.read_csv(plate["index"]), pd.read_csv(plate["nuclei"])
    names = []
    for i, row in index.iterrows():
        loc = nuclei[(nuclei[KEYS].astype(str) == row[KEYS].astype(str).to_numpy()).all(axis=1)]
        h, w = tifffile.imread(root / row["FileName_DNA"]).shape
        yy, xx = np.mgrid[:h, :w]
        d2 = ((xx[None] - loc["Nuclei_Location_Center_X"].to_numpy()[:, None, None]) ** 2
              + (yy[None] - loc["Nuclei_Location_Center_Y"].to_numpy()[:, None, None]) ** 2)
        lab = np.where(d2.min(0) <= radius ** 2, loc["ObjectNumber"].to_numpy()[d2.argmin(0)], 0)
        names.append(f"labels_{i}.tif")
        tifffile.imwrite(root / names[-1], lab.astype(np.uint16))
    index["FileName_Labels"] = names
    index.to_csv(root / "index_labels.csv", index=False)
    return root / "index_labels.csv"


def test_masked_model_with_labels(setup):
    """A model trained on masked crops ("object": all but the cell zeroed) is profiled from an index with label
    images as from its store; without a label column, or with a store masked otherwise, it is refused."""
    import phenovec

    tmp, plate, plain = setup
    labelled = labelled_index(plate)
    store = tmp / "crops_masked"
    phenovec.crop(read_image_index(labelled, CHANNELS), plate["nuclei"], store, box_size=BOX, edge="drop",
                  mask="object", chunk_cells=16, progress=False)
    onnx_path = store_model(plate, store, tmp / "masked.onnx")
    assert read_metadata(onnx_path).intensity == {"input_scaling": "minmax", "dtype_max": 65535.0,
                                                  "crop_rescale": False, "crop_mask": "object"}
    x = assert_images_equal_store(onnx_path, labelled, plate, store, tmp, "masked")
    assert np.abs(x - unscaled_reference(setup)).max() > 1e-3  # the mask changed the crops
    with pytest.raises(ValueError, match=rf"{onnx_path.name}: .*intensity\.crop_mask = 'object'\) but the image "
                                         r"index .*index\.csv has no label images"):
        profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp / "m1", progress=False)
    with pytest.raises(ValueError, match=rf"crops made with mask='object' but the model .*{plain.name} was trained "
                                         r"on crop_mask=None \(metadata intensity\.crop_mask\)"):
        profile_sites(plain, crops_dir=store, out=tmp / "m2", progress=False)
    assert not (tmp / "m1").exists() and not (tmp / "m2").exists()
    # `phenovec profile --labels Seg`: a label column of another name, read by the command; --labels with a store
    # is refused
    import subprocess
    import sys

    seg = pd.read_csv(labelled).rename(columns={"FileName_Labels": "FileName_Seg"})
    seg.to_csv(labelled.with_name("index_seg.csv"), index=False)
    cmd = [sys.executable, "-m", "phenovec.cli", "profile", str(onnx_path), "--index",
           str(labelled.with_name("index_seg.csv")), "--locations", str(plate["nuclei"]), "-o", str(tmp / "m3"),
           "--labels", "Seg", "--dtype", "float32", "--batch-size", "16", "--workers", "2", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(read_outputs(tmp / "m3")[1], x)
    r = subprocess.run(cmd[:5] + ["--crops", str(store), "-o", str(tmp / "m4"), "--labels", "Seg"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "--labels names a label-image column of --index" in r.stderr
