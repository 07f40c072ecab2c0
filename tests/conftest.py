"""Shared fixtures: the real third-party data beside the repo (../shared/data)."""
import sys
from pathlib import Path

import pandas as pd
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Test modules that run the scib-metrics peer, which loads JAX. JAX warns that os.fork() after it is loaded may
# deadlock, and the Dask, DataLoader and profiling tests fork: these modules run last (and import the peer lazily,
# tests/integration_data.py), so no test forks after JAX is loaded.
JAX_PEER_MODULES = ("test_integration_clustering.py", "test_integration_kbet.py", "test_integration_metrics.py",
                    "test_integration_sbee.py", "test_integration_table.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: Path(str(item.fspath)).name in JAX_PEER_MODULES)  # stable: the rest keep their order


def synth_crop_store(root: Path, *, wells: int, sites_per_well: int, size: int, cells_per_site: tuple,
                     box_size: int = 32) -> Path:
    """A seeded synthetic plate (``phenovec synth``) cropped to 5 x box x box uint16 crops in ``root / "crops"``."""
    from phenovec.ingest.crop import crop_index
    from phenovec.ingest.index import read_image_index
    from phenovec.ingest.synth import CHANNELS, synth_plate

    p = synth_plate(root, plates=1, wells=wells, sites_per_well=sites_per_well, size=size,
                    cells_per_site=cells_per_site, seed=0, progress=False)
    crop_index(read_image_index(p["index"], list(CHANNELS)), p["nuclei"], root / "crops", box_size=box_size,
               edge="shift", chunk_cells=128, progress=False)
    return root / "crops"


def shared(*parts: str) -> Path:
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.fail(f"shared test data missing: {p} (the repo expects ../shared/data beside it)")
    return p


@pytest.fixture(scope="session")
def nelisa() -> pd.DataFrame:
    """nELISA profiles (Kalinin et al. mAP paper input): 1,525 wells x 191 analytes."""
    df = pd.read_parquet(shared("kalinin-map-nelisa", "nelisa_profiles.parquet"))
    df["Metadata_broad_sample"] = df["Metadata_broad_sample"].fillna("DMSO")
    return df


@pytest.fixture(scope="session")
def bbbc021() -> pd.DataFrame:
    """BBBC021 per-well mean profiles joined to compound, concentration and MOA (632 wells)."""
    d = shared("bbbc021-cytominergallery")
    prof = pd.read_csv(d / "ljosa_jbiomolscreen_2013_per_well_mean.csv.gz")
    img = pd.read_csv(d / "BBBC021_v1_image.csv.gz")
    moa = pd.read_csv(d / "BBBC021_v1_moa.csv")
    wells = (img[["Image_Metadata_Plate_DAPI", "Image_Metadata_Well_DAPI", "Image_Metadata_Compound",
                  "Image_Metadata_Concentration"]].drop_duplicates()
             .rename(columns={"Image_Metadata_Plate_DAPI": "Image_Metadata_Plate", "Image_Metadata_Well_DAPI": "Image_Metadata_Well"}))
    df = prof.merge(wells, on=["Image_Metadata_Plate", "Image_Metadata_Well"])
    df = df.merge(moa, left_on=["Image_Metadata_Compound", "Image_Metadata_Concentration"], right_on=["compound", "concentration"])
    meta_cols = ["Image_Metadata_Plate", "Image_Metadata_Well", "compound", "concentration", "moa"]
    df = df.rename(columns={c: "Metadata_" + c.replace("Image_Metadata_", "") for c in meta_cols})
    df = df.drop(columns=["Image_Metadata_Compound", "Image_Metadata_Concentration"])
    assert len(df) == 632, len(df)
    return df


@pytest.fixture(scope="session")
def lincs_plate() -> pd.DataFrame:
    """LINCS plate SQ00015054 (cytominer-eval's fixture), feature columns with NaN dropped."""
    df = pd.read_csv(shared("cytominer-eval-lincs-plate", "SQ00015054_normalized_feature_select.csv.gz"))
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    bad = [c for c in feats if df[c].isna().any()]
    return df.drop(columns=bad)


@pytest.fixture(scope="session")
def synth_crops(tmp_path_factory) -> Path:
    """A synthetic 2-plate set (7 treatments, 56 wells, ~3,400 cells) cropped to 5 x 48 x 48 uint16 crops."""
    from phenovec.ingest.crop import crop_index
    from phenovec.ingest.index import read_image_index
    from phenovec.ingest.synth import CHANNELS, synth_plate

    root = tmp_path_factory.mktemp("synth-train")
    p = synth_plate(root, plates=2, wells=28, sites_per_well=2, size=256, cells_per_site=(25, 35), seed=0,
                    progress=False)
    crop_index(read_image_index(p["index"], list(CHANNELS)), p["nuclei"], root / "crops", box_size=48,
               edge="shift", chunk_cells=256, progress=False)
    return root / "crops"


# The real CPJUMP1 site: channel -> file (the folder's README channel map), and nucleus-centred crops from it.
CPJUMP1_FILES = {c: f"r01c01f01p01-ch{k}sk1fk1fl1.tiff" for c, k in
                 (("DNA", 5), ("ER", 4), ("RNA", 3), ("AGP", 1), ("Mito", 2))}


def cpjump1_crops(n: int, box: int = 64):
    """uint16 n x 5 x box x box crops (DNA, ER, RNA, AGP, Mito) around the first nuclei of the real CPJUMP1 site
    that lie wholly inside it (tifffile + numpy slicing, centre rounded)."""
    import numpy as np
    import tifffile

    d = shared("deepprofiler-cpjump1-site")
    img = np.stack([tifffile.imread(d / f) for f in CPJUMP1_FILES.values()])
    nuc = pd.read_csv(d / "Nuclei.csv", usecols=["AreaShape_Center_X", "AreaShape_Center_Y"])
    out = []
    for x, y in zip(nuc["AreaShape_Center_X"].round().astype(int), nuc["AreaShape_Center_Y"].round().astype(int)):
        y0, x0 = y - box // 2, x - box // 2
        if 0 <= y0 and 0 <= x0 and y0 + box <= img.shape[1] and x0 + box <= img.shape[2]:
            out.append(img[:, y0:y0 + box, x0:x0 + box])
        if len(out) == n:
            break
    assert len(out) == n, f"only {len(out)} nuclei lie {box // 2} px inside the site"
    return np.stack(out)


def calibrate_batchnorm(model, x):
    """Set ``model``'s BatchNorm statistics from the real inputs ``x`` (numpy N x C x H x W, float32) in one
    train-mode pass (cumulative averages), then eval mode. A randomly initialised network's BatchNorm otherwise
    gives features near 1e-14, which would make an ONNX-vs-PyTorch comparison vacuous."""
    import torch

    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(x))
    return model.eval()


class _NoOpenVINODevice:
    """onnxruntime as on a CPU where OpenVINO's plugin lists no device (issue 22's AMD EPYC): ``get_ep_devices`` is
    empty and a second registration of the plugin library fails as onnxruntime does ("already registered")."""

    def __init__(self):
        self.calls = 0

    def register(self, name, path):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError(f"EP library is already registered under {name}")


@pytest.fixture
def no_openvino_device(monkeypatch):
    """This process's onnxruntime behaves as on a CPU where the OpenVINO plugin (installed) lists no device; the
    plugin's once-per-process registration state starts fresh and is restored afterwards."""
    import types

    import onnxruntime as ort

    from phenovec.runtime import providers

    fake = _NoOpenVINODevice()
    plugin = types.SimpleNamespace(get_library_path=lambda: "libonnxruntime_providers_openvino_plugin.so")
    monkeypatch.setitem(sys.modules, "onnxruntime_ep_openvino", plugin)
    monkeypatch.setattr(providers, "_REGISTERED", False)
    monkeypatch.setattr(providers, "_REGISTER_ERROR", None)
    monkeypatch.setattr(providers, "openvino_installed", lambda: True)
    monkeypatch.setattr(ort, "get_ep_devices", lambda: [])
    monkeypatch.setattr(ort, "register_execution_provider_library", fake.register)
    return fake
