"""Field tiles (phenovec.ingest.fields) vs tifffile + numpy: whole fields with block-mean downsampling
(MOAProfiler), GapNet-style views, illumination + intensity + dtype, multi-page frames, resume after a crash."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from phenovec.ingest.fields import SiteTiler, tile_index
from phenovec.ingest.index import read_image_index

from conftest import shared

CHANNELS = {"DNA": 5, "ER": 4, "RNA": 3, "AGP": 1, "Mito": 2}


def _real_index(n_sites: int):
    d = shared("deepprofiler-cpjump1-site")
    rows = [{"Metadata_Plate": "BR00116991", "Metadata_Well": "A01", "Metadata_Site": s, "Metadata_Treatment": "DMSO",
             **{f"FileName_{c}": f"r01c01f01p01-ch{k}sk1fk1fl1.tiff" for c, k in CHANNELS.items()}}
            for s in range(1, n_sites + 1)]
    idx = read_image_index(pd.DataFrame(rows), list(CHANNELS), root=d)
    ref = np.stack([tifffile.imread(p) for p in idx.paths[0]])
    return idx, ref


def _open(out):
    import zarr

    return zarr.open_array(str(out / "tiles.zarr"), mode="r"), pd.read_parquet(out / "tiles.parquet")


def test_whole_fields_downsampled_like_numpy(tmp_path):
    idx, ref = _real_index(2)
    res = tile_index(idx, tmp_path / "o", factor=4, progress=False)
    arr, table = _open(tmp_path / "o")
    want = ref.astype(np.float64).reshape(5, 270, 4, 270, 4).mean(axis=(2, 4)).astype(np.float32)
    assert arr.shape == (2, 5, 270, 270) and arr.dtype == np.float32 and arr.chunks == (1, 5, 270, 270)
    np.testing.assert_allclose(arr[0], want, rtol=1e-6)
    np.testing.assert_array_equal(arr[1], arr[0])
    assert res.tiles == 2 and list(table["row"]) == [0, 1] and list(table["view"]) == [0, 0]
    assert (table["y0"] == 0).all() and (table["Metadata_Treatment"] == "DMSO").all()
    assert arr.attrs["factor"] == 4 and arr.attrs["channels"] == list(CHANNELS) and arr.attrs["dtype"] == "float32"
    tile_index(idx, tmp_path / "full", progress=False)  # factor 1: raw uint16 fields
    full, _ = _open(tmp_path / "full")
    assert full.dtype == np.uint16
    np.testing.assert_array_equal(full[1], ref)


def test_gapnet_views_like_slicing(tmp_path):
    idx, ref = _real_index(2)
    tile_index(idx, tmp_path / "o", views=(520, 692, 388), chunk_sites=2, progress=False)
    arr, table = _open(tmp_path / "o")
    corners = [(r, c) for r in range(0, 1080 - 520 + 1, 388) for c in range(0, 1080 - 692 + 1, 388)]
    assert corners == [(0, 0), (0, 388), (388, 0), (388, 388)]
    assert arr.shape == (8, 5, 520, 692) and arr.dtype == np.uint16 and arr.chunks[0] == 8
    for _, t in table.iterrows():
        np.testing.assert_array_equal(arr[t["row"]], ref[:, t["y0"] : t["y0"] + 520, t["x0"] : t["x0"] + 692])
    assert list(zip(table["y0"], table["x0"]))[:4] == corners and list(table["view"]) == [0, 1, 2, 3] * 2


def test_illumination_intensity_dtype_and_frames(tmp_path):
    """Synthetic 2-plate set: one multi-page TIFF holds both channels (Frame_<ch>), flat fields per plate,
    percentile rescale, downsampling and uint8 / float16 output vs numpy."""
    rng = np.random.default_rng(0)
    h, w = 40, 48
    rows, raws = [], []
    flats = {}
    for plate in ("P1", "P2"):
        for ch in ("DNA", "ER"):
            f = 1 + rng.random((h, w)).astype(np.float32)
            (tmp_path / "ill" / plate).mkdir(parents=True, exist_ok=True)
            np.save(tmp_path / "ill" / plate / f"{plate}_{ch}.npy", f)
            flats[(plate, ch)] = f
        for s in range(2):
            pages = rng.integers(0, 5000, (3, h, w), dtype=np.uint16)
            p = tmp_path / f"{plate}_{s}.tif"
            with tifffile.TiffWriter(p) as tw:  # 3 pages
                for page in pages:
                    tw.write(page, compression="zlib", photometric="minisblack")
            rows.append({"Metadata_Plate": plate, "Metadata_Well": "A01", "Metadata_Site": s,
                         "FileName_DNA": p.name, "Frame_DNA": 2, "FileName_ER": p.name, "Frame_ER": 0})
            raws.append((plate, np.stack([tifffile.imread(p, key=2), tifffile.imread(p, key=0)])))
    idx = read_image_index(pd.DataFrame(rows), ["DNA", "ER"], root=tmp_path)
    assert idx.frames == [[2, 0]] * 4

    def ref(plate, raw, factor):
        x = raw.astype(np.float32) / np.stack([flats[(plate, "DNA")], flats[(plate, "ER")]])
        x = x.astype(np.float64)
        out = []
        for c in range(2):
            lo, hi = np.percentile(x[c], [1, 99])
            out.append(np.clip((x[c] - lo) / (hi - lo), 0, 1))
        x = np.stack(out)
        return x.reshape(2, h // factor, factor, w // factor, factor).mean(axis=(2, 4))

    tile_index(idx, tmp_path / "f16", factor=2, illumination=tmp_path / "ill", intensity=("percentile", 1, 99),
               dtype="float16", chunk_sites=3, progress=False)
    arr, table = _open(tmp_path / "f16")
    assert arr.dtype == np.float16 and arr.shape == (4, 2, 20, 24)
    for i, (plate, raw) in enumerate(raws):
        np.testing.assert_allclose(arr[i].astype(np.float64), ref(plate, raw, 2), atol=1e-3)
    prov = arr.attrs["illumination_files"]
    assert set(prov) == {"P1", "P2"} and all(len(e["sha256"]) == 64 for e in prov["P1"])
    mapping = {k: tmp_path / "ill" / k[0] / f"{k[0]}_{k[1]}.npy" for k in flats}
    tile_index(idx, tmp_path / "u8", illumination=mapping, intensity=("percentile", 1, 99), dtype="uint8", progress=False)
    arr, _ = _open(tmp_path / "u8")
    assert arr.dtype == np.uint8
    for i, (plate, raw) in enumerate(raws):
        want = np.rint(ref(plate, raw, 1) * 255)
        diff = np.abs(arr[i].astype(np.int64) - want)
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float32 storage of the rescaled value
    tile_index(idx, tmp_path / "rng", intensity=("range", 100, 4000), progress=False)
    arr, _ = _open(tmp_path / "rng")
    np.testing.assert_allclose(arr[1], np.clip((raws[1][1].astype(np.float64) - 100) / 3900, 0, 1), atol=1e-7)


def test_crash_then_resume_equals_one_run(tmp_path, monkeypatch):
    idx, _ = _real_index(5)
    tile_index(idx, tmp_path / "whole", factor=8, chunk_sites=2, progress=False)
    real = SiteTiler.__call__
    calls = []

    def crashing(self, s):
        calls.append(s)
        if len(calls) == 4:
            raise RuntimeError("simulated crash")
        return real(self, s)

    monkeypatch.setattr(SiteTiler, "__call__", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tile_index(idx, tmp_path / "again", factor=8, chunk_sites=2, progress=False)
    m = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert m["done"] == [0] and not m["complete"]  # sites 0-1 committed; site 2 of group 1 computed, then crash
    monkeypatch.setattr(SiteTiler, "__call__", real)
    calls.clear()

    def counting(self, s):
        calls.append(s)
        return real(self, s)

    monkeypatch.setattr(SiteTiler, "__call__", counting)
    res = tile_index(idx, tmp_path / "again", factor=8, chunk_sites=2, progress=False)
    assert res.resumed_sites == 2 and calls == [2, 3, 4]
    a, ta = _open(tmp_path / "whole")
    b, tb = _open(tmp_path / "again")
    np.testing.assert_array_equal(a[:], b[:])
    pd.testing.assert_frame_equal(ta, tb)
    with pytest.raises(ValueError, match="another configuration"):
        tile_index(idx, tmp_path / "again", factor=4, chunk_sites=2, progress=False)


def test_bad_options(tmp_path):
    idx, _ = _real_index(1)
    with pytest.raises(ValueError, match="not both"):
        tile_index(idx, tmp_path / "a", factor=2, views=(10, 10, 10))
    with pytest.raises(ValueError, match="uint8 needs an intensity"):
        tile_index(idx, tmp_path / "b", dtype="uint8")
    with pytest.raises(ValueError, match="intensity kind"):
        tile_index(idx, tmp_path / "c", intensity=("zscore", 0, 1))
    with pytest.raises(Exception, match="not divisible"):
        tile_index(idx, tmp_path / "d", factor=7, progress=False)
    with pytest.raises(FileNotFoundError, match="plate 'BR00116991' channel 'DNA'"):
        tile_index(idx, tmp_path / "e", illumination=tmp_path / "none", progress=False)
    with pytest.raises(ValueError, match=r"Frame_ER.*not a page number"):
        read_image_index(pd.DataFrame([{"Metadata_Plate": 1, "Metadata_Well": "A", "Metadata_Site": 1,
                                        "ER": "x.tif", "Frame_ER": -1}]), ["ER"])


def test_tiles_cli(tmp_path):
    import argparse

    from phenovec.ingest.command import add_tiles_parser

    parser = argparse.ArgumentParser()
    add_tiles_parser(parser.add_subparsers(dest="stage", required=True))
    d = shared("deepprofiler-cpjump1-site")
    row = {"Metadata_Plate": "BR00116991", "Metadata_Well": "A01", "Metadata_Site": 1,
           **{f"FileName_{c}": str(d / f"r01c01f01p01-ch{k}sk1fk1fl1.tiff") for c, k in CHANNELS.items()}}
    pd.DataFrame([row]).to_csv(tmp_path / "index.csv", index=False)
    a = parser.parse_args(["tiles", str(tmp_path / "index.csv"), "--out", str(tmp_path / "t"), "--factor", "2",
                           "--intensity", "range", "0", "4000", "--dtype", "uint8", "--quiet"])
    summary = a.run(a)
    assert summary["tiles"] == 1
    arr, _ = _open(tmp_path / "t")
    raw = np.stack([tifffile.imread(p) for p in read_image_index(tmp_path / "index.csv", list(CHANNELS)).paths[0]])
    v = np.clip(raw.astype(np.float64) / 4000, 0, 1).astype(np.float32)
    mean = v.astype(np.float64).reshape(5, 540, 2, 540, 2).mean(axis=(2, 4)).astype(np.float32)
    np.testing.assert_array_equal(arr[0], np.rint(mean * np.float32(255)).astype(np.uint8))
