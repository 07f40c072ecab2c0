"""crop_index options vs tifffile + numpy on real fields: illumination correction, intensity rescaling, output
dtype, label-image masks (ObjectNumber ids or DeepProfiler's median rule), multi-page frames, provenance in
manifest.json and the Zarr attributes, the ``crop`` CLI options."""
from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from phenovec.ingest.crop import crop_index
from phenovec.ingest.illumination import compute_illumination
from phenovec.ingest.index import read_image_index, read_locations

from conftest import shared

CHANNELS = {"DNA": 5, "ER": 4, "RNA": 3, "AGP": 1, "Mito": 2}


def _site():
    d = shared("deepprofiler-cpjump1-site")
    row = {"Metadata_Plate": "BR00116991", "Metadata_Well": "A01", "Metadata_Site": 1,
           **{f"FileName_{c}": f"r01c01f01p01-ch{k}sk1fk1fl1.tiff" for c, k in CHANNELS.items()}}
    idx = read_image_index(pd.DataFrame([row]), list(CHANNELS), root=d)
    raw = np.stack([tifffile.imread(p) for p in idx.paths[0]])
    return idx, read_locations(d / "Nuclei.csv"), raw


def _slices(cells, box):
    for _, c in cells[cells["row"] >= 0].iterrows():
        r0 = int(np.floor(c["y"] + 0.5)) - box // 2
        c0 = int(np.floor(c["x"] + 0.5)) - box // 2
        yield int(c["row"]), slice(r0, r0 + box), slice(c0, c0 + box)


def _open(out):
    import zarr

    return zarr.open_array(str(out / "crops.zarr"), mode="r"), pd.read_parquet(out / "cells.parquet")


def _percentile01(x):
    out = np.empty(x.shape, np.float64)
    for c in range(len(x)):
        lo, hi = np.percentile(x[c], [0.1, 99.9])
        out[c] = np.clip((x[c] - lo) / (hi - lo), 0, 1)
    return out


def test_illumination_and_percentile_like_numpy_with_provenance(tmp_path):
    idx, loc, raw = _site()
    files = compute_illumination(idx, tmp_path / "illum", progress=False)
    flat = np.stack([np.load(files[("BR00116991", c)]) for c in CHANNELS])
    crop_index(idx, loc, tmp_path / "o", box_size=48, edge="drop", illumination=tmp_path / "illum",
               intensity=("percentile", 0.1, 99.9), progress=False)
    arr, cells = _open(tmp_path / "o")
    assert arr.dtype == np.float32 and len(cells) == len(loc) and (cells["row"] >= 0).sum() == arr.shape[0] > 80
    ref = _percentile01((raw.astype(np.float32) / flat).astype(np.float64)).astype(np.float32)
    for row, ys, xs in _slices(cells, 48):
        np.testing.assert_allclose(arr[row], ref[:, ys, xs], atol=2e-7, rtol=0)
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())["config"]
    assert m["illumination"] == str(tmp_path / "illum") and m["intensity"] == ["percentile", 0.1, 99.9]
    assert m["dtype"] == "float32" and m["mask"] is None
    attrs = dict(arr.attrs)
    assert attrs["box_size"] == 48 and attrs["edge"] == "drop" and attrs["channels"] == list(CHANNELS)
    assert attrs["phenovec_version"]
    prov = attrs["illumination_files"]["BR00116991"]
    assert [p["channel"] for p in prov] == list(CHANNELS)
    for p in prov:
        assert p["sha256"] == hashlib.sha256(files[("BR00116991", p["channel"])].read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="another configuration"):
        crop_index(idx, loc, tmp_path / "o", box_size=48, edge="drop", illumination=tmp_path / "illum",
                   intensity=("percentile", 1, 99), progress=False)


def test_range_to_uint8_and_uint16_like_numpy(tmp_path):
    idx, loc, raw = _site()
    for dtype, top in (("uint8", 255), ("uint16", 65535)):
        crop_index(idx, loc, tmp_path / dtype, box_size=32, edge="drop", intensity=("range", 100, 3000),
                   dtype=dtype, progress=False)
        arr, cells = _open(tmp_path / dtype)
        assert arr.dtype == np.dtype(dtype)
        v = np.clip((raw.astype(np.float64) - 100) / 2900, 0, 1).astype(np.float32)
        ref = np.rint(v * np.float32(top)).astype(dtype)
        for row, ys, xs in _slices(cells, 32):
            np.testing.assert_array_equal(arr[row], ref[:, ys, xs])
    with pytest.raises(ValueError, match="uint8 needs a rescale"):
        crop_index(idx, loc, tmp_path / "bad", dtype="uint8", progress=False)


def _labelled_examplehuman(tmp_path, with_ids: bool):
    """ExampleHuman (real 8-bit fields); a label image from the real DNA channel (threshold + connected
    components), cell centres = object centroids, ObjectNumber = label."""
    from scipy import ndimage as ndi

    d = shared("cytotable-examplehuman")
    names = ["DNA", "PH3", "Cell"]
    files = {c: str(d / f"AS_09125_050116030001_D03f00d{k}.tif") for k, c in enumerate(names)}
    imgs = np.stack([tifffile.imread(f) for f in files.values()])
    lab, n = ndi.label(ndi.binary_opening(imgs[0] > np.percentile(imgs[0], 80), iterations=1))
    sizes = ndi.sum(np.ones_like(lab), lab, range(1, n + 1))
    keep = np.flatnonzero(sizes >= 30) + 1
    lab = np.where(np.isin(lab, keep), lab, 0).astype(np.uint16)
    tifffile.imwrite(tmp_path / "labels.tif", lab)
    com = ndi.center_of_mass(np.ones_like(lab), lab, keep)
    loc = pd.DataFrame({"x": [c[1] for c in com], "y": [c[0] for c in com]})
    if with_ids:
        loc.insert(0, "ObjectNumber", keep)
    row = {"Metadata_Plate": "p", "Metadata_Well": "w", "Metadata_Site": 1, "FileName_Labels": str(tmp_path / "labels.tif"),
           **{f"FileName_{c}": f for c, f in files.items()}}
    return read_image_index(pd.DataFrame([row]), names), loc, imgs, lab, keep


@pytest.mark.parametrize("mode", ["neighbors", "object"])
def test_masks_with_object_numbers(tmp_path, mode):
    idx, loc, imgs, lab, keep = _labelled_examplehuman(tmp_path, with_ids=True)
    assert len(keep) > 20 and idx.labels == [str(tmp_path / "labels.tif")]
    crop_index(idx, loc, tmp_path / "o", box_size=40, edge="drop", mask=mode, progress=False)
    arr, cells = _open(tmp_path / "o")
    assert arr.dtype == np.uint16 and (cells["row"] >= 0).sum() > 10
    masked_any = False
    for _, c in cells[cells["row"] >= 0].iterrows():
        r0, c0 = int(np.floor(c["y"] + 0.5)) - 20, int(np.floor(c["x"] + 0.5)) - 20
        lc = lab[r0 : r0 + 40, c0 : c0 + 40]
        own = int(c["ObjectNumber"])
        keep_px = (lc == own) if mode == "object" else ((lc == 0) | (lc == own))
        want = imgs[:, r0 : r0 + 40, c0 : c0 + 40] * keep_px
        np.testing.assert_array_equal(arr[int(c["row"])], want)
        masked_any |= bool((~keep_px).any())
    assert masked_any
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["config"]["mask"] == mode


def test_mask_without_ids_uses_deepprofiler_median_rule(tmp_path):
    idx, loc, imgs, lab, _ = _labelled_examplehuman(tmp_path, with_ids=False)
    crop_index(idx, loc, tmp_path / "o", box_size=40, edge="drop", mask="object", progress=False)
    arr, cells = _open(tmp_path / "o")
    for _, c in cells[cells["row"] >= 0].iterrows():
        y, x = int(c["y"]), int(c["x"])  # DeepProfiler boxes.py: median of the 10 x 10 patch, int()
        patch = lab[max(y - 5, 0) : y + 5, max(x - 5, 0) : x + 5]
        own = int(np.median(patch))
        r0, c0 = int(np.floor(c["y"] + 0.5)) - 20, int(np.floor(c["x"] + 0.5)) - 20
        want = imgs[:, r0 : r0 + 40, c0 : c0 + 40] * (lab[r0 : r0 + 40, c0 : c0 + 40] == own)
        np.testing.assert_array_equal(arr[int(c["row"])], want)


def test_mask_needs_labels(tmp_path):
    idx, loc, _ = _site()
    with pytest.raises(ValueError, match="needs label images"):
        crop_index(idx, loc, tmp_path / "o", mask="object", progress=False)


def test_frames_from_multipage_tiffs_and_compact_rows(tmp_path):
    rng = np.random.default_rng(3)
    pages = rng.integers(0, 60000, (3, 90, 70), dtype=np.uint16)
    with tifffile.TiffWriter(tmp_path / "stack.tif") as tw:
        for page in pages:
            tw.write(page, compression="zlib", photometric="minisblack")
    row = {"Metadata_Plate": "p", "Metadata_Well": "w", "Metadata_Site": 1, "FileName_DNA": "stack.tif",
           "Frame_DNA": 2, "FileName_ER": "stack.tif", "Frame_ER": 1}
    pd.DataFrame([row]).to_csv(tmp_path / "index.csv", index=False)
    idx = read_image_index(tmp_path / "index.csv", ["DNA", "ER"])
    loc = pd.DataFrame({"x": [20.0, 35.2, 2.0, np.nan], "y": [30.0, 60.7, 3.0, 5.0]})
    crop_index(idx, loc, tmp_path / "o", box_size=16, edge="drop", progress=False)
    arr, cells = _open(tmp_path / "o")
    assert list(cells["edge"]) == ["inside", "inside", "dropped", "invalid"] and list(cells["row"]) == [0, 1, -1, -1]
    assert arr.shape == (2, 2, 16, 16)
    ref = pages[[2, 1]]
    for row_, ys, xs in _slices(cells, 16):
        np.testing.assert_array_equal(arr[row_], ref[:, ys, xs])


def test_crop_cli_options(tmp_path, capsys):
    from phenovec.ingest.command import add_crop_parser, add_illum_parser

    parser = argparse.ArgumentParser()
    stages = parser.add_subparsers(dest="stage", required=True)
    add_crop_parser(stages)
    add_illum_parser(stages)
    idx, loc, raw = _site()
    d = shared("deepprofiler-cpjump1-site")
    row = {"Metadata_Plate": "BR00116991", "Metadata_Well": "A01", "Metadata_Site": 1,
           **{f"FileName_{c}": str(d / f"r01c01f01p01-ch{k}sk1fk1fl1.tiff") for c, k in CHANNELS.items()}}
    pd.DataFrame([row]).to_csv(tmp_path / "index.csv", index=False)
    a = parser.parse_args(["illum", str(tmp_path / "index.csv"), "--out", str(tmp_path / "ill"), "--quiet"])
    summary = a.run(a)
    assert summary["files"] == 5 and summary["plates"] == ["BR00116991"]
    a = parser.parse_args(["crop", str(tmp_path / "index.csv"), "--locations", str(d / "Nuclei.csv"), "--out",
                           str(tmp_path / "c"), "--box-size", "32", "--illumination", str(tmp_path / "ill"),
                           "--intensity", "range", "0", "5000", "--dtype", "float16", "--quiet"])
    a.run(a)
    arr, cells = _open(tmp_path / "c")
    assert arr.dtype == np.float16
    flat = np.stack([np.load(tmp_path / "ill" / "BR00116991" / f"BR00116991_{c}.npy") for c in CHANNELS])
    ref = np.clip((raw.astype(np.float32) / flat).astype(np.float64) / 5000, 0, 1).astype(np.float32).astype(np.float16)
    for row_, ys, xs in _slices(cells, 32):
        np.testing.assert_array_equal(arr[row_], ref[:, ys, xs])
