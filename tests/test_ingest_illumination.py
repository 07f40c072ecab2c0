"""DeepProfiler illumination functions (phenovec.ingest.illumination) vs DeepProfiler's own algorithm.

The reference below is DeepProfiler's code as written (cytomining/DeepProfiler, BSD-3-Clause,
``deepprofiler/dataset/illumination_statistics.py`` ``IlluminationStatistics.addToMean`` / ``computeStats``
and ``deepprofiler/dataset/illumination_correction.py`` ``IlluminationCorrection.channel_function``), copied
with its scikit-image / scipy calls on the H x W x C float64 stack DeepProfiler's ``pixels.openImage`` builds.
DeepProfiler itself needs TensorFlow 1 and cannot be installed here.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import skimage.filters
import skimage.morphology
import skimage.transform
import tifffile

from phenovec.ingest.illumination import compute_illumination, load_illumination
from phenovec.ingest.index import read_image_index

from conftest import shared


# ---- DeepProfiler's code (attribution above), lightly reshaped into functions ----
def _dp_add_to_mean(mean_image, img, down_scale_factor):
    scale = (img.shape[0] / down_scale_factor, img.shape[1] / down_scale_factor)
    thumb = skimage.transform.resize(img, scale, mode="reflect", anti_aliasing=True, preserve_range=True)
    if mean_image is None:
        mean_image = np.zeros_like(thumb, dtype=np.float64)
    mean_image += thumb
    return mean_image


def _dp_channel_function(mean_channel, disk_size, target_dim):
    operator = skimage.morphology.disk(disk_size)
    filtered_channel = skimage.filters.median(mean_channel.astype(np.uint16), operator)
    filtered_channel = skimage.transform.resize(filtered_channel, target_dim, mode="reflect",
                                                anti_aliasing=True, preserve_range=True)
    robust_minimum = scipy.stats.scoreatpercentile(filtered_channel, 2)
    filtered_channel = np.maximum(filtered_channel, robust_minimum)
    return filtered_channel / robust_minimum


def _deepprofiler_plate(site_paths, down_scale_factor=4, median_filter_size=24):
    """site_paths: per site the channel paths. Returns H x W x C float64 as DeepProfiler's stats."""
    mean, count = None, 0
    for paths in site_paths:
        channels = [tifffile.imread(p) for p in paths]  # DeepProfiler: skimage.io.imread
        img = np.zeros((channels[0].shape[0], channels[0].shape[1], len(channels)))
        for c in range(len(channels)):
            img[:, :, c] = channels[c]
        mean = _dp_add_to_mean(mean, img, down_scale_factor)
        count += 1
    mean /= count
    h, w = img.shape[:2]
    out = np.zeros((h, w, img.shape[2]))
    for ch in range(img.shape[2]):
        out[:, :, ch] = _dp_channel_function(mean[:, :, ch], median_filter_size / 2, (h, w))
    return out
# ---- end of DeepProfiler's code ----


def _index(rows, channels, root):
    return read_image_index(pd.DataFrame(rows), channels, root=root)


def _check(got, ref):
    # same algorithm, same scipy kernels; float32 storage of a float64 function
    np.testing.assert_allclose(got, ref.astype(np.float32), rtol=2e-7, atol=0)


def test_real_cpjump1_site_matches_deepprofiler(tmp_path):
    d = shared("deepprofiler-cpjump1-site")
    chans = {"DNA": 5, "ER": 4, "RNA": 3, "AGP": 1, "Mito": 2}
    row = {"Metadata_Plate": "BR00116991", "Metadata_Well": "A01", "Metadata_Site": 1,
           **{f"FileName_{c}": f"r01c01f01p01-ch{k}sk1fk1fl1.tiff" for c, k in chans.items()}}
    idx = _index([row], list(chans), d)
    res = compute_illumination(idx, tmp_path / "illum", progress=False)
    ref = _deepprofiler_plate([idx.paths[0]])
    flats, prov = load_illumination(tmp_path / "illum", "BR00116991", list(chans), shape=(1080, 1080))
    assert flats.shape == (5, 1080, 1080) and flats.dtype == np.float32
    assert flats.min() >= 1 and flats.max() > 1.05  # a real, non-trivial function
    for ci, c in enumerate(chans):
        assert res[("BR00116991", c)] == tmp_path / "illum" / "BR00116991" / f"BR00116991_{c}.npy"
        _check(flats[ci], ref[:, :, ci])
        assert prov[ci]["channel"] == c
    meta = json.loads((tmp_path / "illum" / "illumination.json").read_text())
    assert meta["params"]["median_filter_size"] == 24 and meta["plates"]["BR00116991"]["shape"] == [1080, 1080]


def test_examplehuman_and_synthetic_plates_match_deepprofiler(tmp_path):
    """Two plates: ExampleHuman (8-bit 512 x 512, 3 channels) as the first site of plate P1 plus synthetic
    16-bit sites with a vignetting gradient; plate P2 purely synthetic with a size not divisible by 4."""
    d = shared("cytotable-examplehuman")
    names = ["DNA", "PH3", "Cell"]
    rng = np.random.default_rng(0)
    rows, per_plate = [], {"P1": [], "P2": []}
    real = {c: str(d / f"AS_09125_050116030001_D03f00d{k}.tif") for k, c in enumerate(names)}
    rows.append({"Metadata_Plate": "P1", "Metadata_Well": "A01", "Metadata_Site": 1, **{f"FileName_{c}": real[c] for c in names}})
    per_plate["P1"].append([real[c] for c in names])
    for plate, (h, w), n in [("P1", (512, 512), 2), ("P2", (203, 150), 3)]:
        yy, xx = np.mgrid[0:h, 0:w]
        vignette = 1.5 - ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (h * h + w * w)
        for s in range(n):
            ps = []
            for c in names:
                img = (rng.poisson(300, (h, w)) * vignette + rng.integers(0, 40, (h, w))).astype(np.uint16)
                p = tmp_path / "img" / f"{plate}_{s}_{c}.tif"
                p.parent.mkdir(exist_ok=True)
                tifffile.imwrite(p, img, compression="zlib")
                ps.append(str(p))
            rows.append({"Metadata_Plate": plate, "Metadata_Well": "B02", "Metadata_Site": s + 2,
                         **{f"FileName_{c}": p for c, p in zip(names, ps)}})
            per_plate[plate].append(ps)
    idx = _index(rows, names, tmp_path)
    compute_illumination(idx, tmp_path / "illum", down_scale_factor=4, median_filter_size=24, progress=False)
    for plate in ("P1", "P2"):
        ref = _deepprofiler_plate(per_plate[plate])
        flats, _ = load_illumination(tmp_path / "illum", plate, names)
        assert flats.shape == (3, *ref.shape[:2])
        for ci in range(3):
            _check(flats[ci], ref[:, :, ci])
    # other parameters: a smaller disk and factor 2 (still DeepProfiler's algorithm)
    compute_illumination(idx, tmp_path / "illum2", down_scale_factor=2, median_filter_size=10, plates=["P2"], progress=False)
    ref = _deepprofiler_plate(per_plate["P2"], down_scale_factor=2, median_filter_size=10)
    flats, _ = load_illumination(tmp_path / "illum2", "P2", names)
    for ci in range(3):
        _check(flats[ci], ref[:, :, ci])


def test_rerun_skips_done_plates_refuses_other_params_and_mapping_source(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    rows = []
    for plate in ("A", "B"):
        p = tmp_path / f"{plate}.tif"
        tifffile.imwrite(p, rng.integers(100, 200, (64, 48), dtype=np.uint16))
        rows.append({"Metadata_Plate": plate, "Metadata_Well": "A01", "Metadata_Site": 1, "FileName_DNA": str(p)})
    idx = _index(rows, ["DNA"], tmp_path)
    out = tmp_path / "illum"
    first = compute_illumination(idx, out, progress=False)
    import phenovec.ingest.illumination as il

    def boom(*a, **k):
        raise AssertionError("a done plate was recomputed")

    monkeypatch.setattr(il, "read_channel", boom)
    again = compute_illumination(idx, out, progress=False)
    assert again == first
    monkeypatch.undo()
    with pytest.raises(ValueError, match="made with"):
        compute_illumination(idx, out, median_filter_size=10, progress=False)
    flats, prov = load_illumination({("A", "DNA"): first[("A", "DNA")]}, "A", ["DNA"])
    assert flats.shape == (1, 64, 48) and len(prov[0]["sha256"]) == 64
    import hashlib

    assert prov[0]["sha256"] == hashlib.sha256(first[("A", "DNA")].read_bytes()).hexdigest()


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"plate 'X' channel 'DNA'.*X_DNA\.npy is missing"):
        load_illumination(tmp_path, "X", ["DNA"])
    with pytest.raises(KeyError, match="plate 'X' channel 'ER'"):
        load_illumination({("X", "DNA"): tmp_path / "a.npy"}, "X", ["ER"])
    (tmp_path / "X").mkdir()
    np.save(tmp_path / "X" / "X_DNA.npy", np.ones((10, 12), np.float32))
    np.save(tmp_path / "X" / "X_ER.npy", np.ones((10, 11), np.float32))
    with pytest.raises(ValueError, match=r"channel 'ER'\) is \(10, 11\)"):
        load_illumination(tmp_path, "X", ["DNA", "ER"])
    with pytest.raises(ValueError, match=r"but the images are \(20, 20\)"):
        load_illumination(tmp_path, "X", ["DNA"], shape=(20, 20))
    np.save(tmp_path / "X" / "X_ER.npy", np.zeros((10, 12), np.float32))
    with pytest.raises(ValueError, match="not finite and > 0"):
        load_illumination(tmp_path, "X", ["ER"])
    # images of one plate with different sizes
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    tifffile.imwrite(a, np.ones((16, 16), np.uint16))
    tifffile.imwrite(b, np.ones((16, 20), np.uint16))
    rows = [{"Metadata_Plate": "P", "Metadata_Well": "A01", "Metadata_Site": i, "FileName_DNA": str(p)}
            for i, p in enumerate([a, b])]
    with pytest.raises(ValueError, match=r"b\.tif.*must share one size"):
        compute_illumination(_index(rows, ["DNA"], tmp_path), tmp_path / "o", progress=False)
    # an all-zero channel has no robust minimum
    z = tmp_path / "z.tif"
    tifffile.imwrite(z, np.zeros((16, 16), np.uint16))
    rows = [{"Metadata_Plate": "Z", "Metadata_Well": "A01", "Metadata_Site": 1, "FileName_DNA": str(z)}]
    with pytest.raises(ValueError, match="plate 'Z' channel DNA.*positive robust minimum"):
        compute_illumination(_index(rows, ["DNA"], tmp_path), tmp_path / "o2", progress=False)
