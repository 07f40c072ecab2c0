"""Crops of a real 5-channel site into Zarr (+ cell table): layout, edge outcomes, resumability after a crash."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from phenovec import _core
from phenovec.ingest.crop import OUTCOMES, crop_index
from phenovec.ingest.index import read_image_index, read_locations

from conftest import SHARED_DATA

SITE = SHARED_DATA / "deepprofiler-cpjump1-site"
CHANNELS = {"DNA": 5, "ER": 4, "RNA": 3, "AGP": 1, "Mito": 2}


def _index(n_sites: int):
    """The real site listed ``n_sites`` times (as sites 1..n of well A01): enough to interrupt and resume."""
    rows = []
    for s in range(1, n_sites + 1):
        row = {"Metadata_Plate": "BR00116991", "Metadata_Well": "A01", "Metadata_Site": s, "Metadata_Treatment": "DMSO"}
        row.update({f"FileName_{c}": f"r01c01f01p01-ch{k}sk1fk1fl1.tiff" for c, k in CHANNELS.items()})
        rows.append(row)
    return read_image_index(pd.DataFrame(rows), list(CHANNELS), root=SITE)


def _locations(n_sites: int):
    loc = read_locations(SITE / "Nuclei.csv")
    parts = [loc.assign(Metadata_Plate="BR00116991", Metadata_Well="A01", Metadata_Site=s) for s in range(1, n_sites + 1)]
    return pd.concat(parts, ignore_index=True)


def test_crops_zarr_and_cell_table(tmp_path):
    import zarr

    idx, locs = _index(1), _locations(1)
    res = crop_index(idx, locs, tmp_path / "out", box_size=64, edge="drop", chunk_cells=32, progress=False)
    cells = pd.read_parquet(tmp_path / "out" / "cells.parquet")
    assert len(cells) == 109 == res.cells
    arr = zarr.open_array(str(tmp_path / "out" / "crops.zarr"), mode="r")
    has = cells["row"] >= 0
    assert arr.shape == (int(has.sum()), 5, 64, 64) and arr.dtype == np.uint16
    assert set(cells.loc[~has, "edge"]) <= {"dropped", "invalid"} and set(cells.loc[has, "edge"]) == {"inside"}
    assert (cells.loc[has, "row"].to_numpy() == np.arange(has.sum())).all()
    crops, codes = _core.crop_site(idx.paths[0], cells["x"].to_numpy(), cells["y"].to_numpy(), 64, "drop", False)
    np.testing.assert_array_equal(arr[:], crops[np.asarray(codes) <= 2])
    assert list(cells["edge"].cat.categories) == list(OUTCOMES)
    assert (cells["Metadata_Treatment"] == "DMSO").all()


def test_crash_then_resume_equals_one_run(tmp_path, monkeypatch):
    import zarr

    idx, locs = _index(4), _locations(4)
    whole = crop_index(idx, locs, tmp_path / "whole", box_size=48, edge="pad", chunk_cells=64, progress=False)
    calls = []
    real = _core.crop_site

    def crashing(paths, xs, ys, box, edge, rescale, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(paths, xs, ys, box, edge, rescale, **kw)

    monkeypatch.setattr(_core, "crop_site", crashing, raising=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crop_index(idx, locs, tmp_path / "again", box_size=48, edge="pad", chunk_cells=64, progress=False)
    import json

    m = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert m["committed"] % 64 == 0 and not m["complete"]
    done_before = len(m["done"])
    assert done_before >= 1  # 2 sites x 109 padded crops = 218 rows: 3 whole chunks committed, site 0 done
    calls.clear()
    monkeypatch.setattr(_core, "crop_site", real)
    res = crop_index(idx, locs, tmp_path / "again", box_size=48, edge="pad", chunk_cells=64, progress=False)
    assert res.resumed_sites == done_before
    a = zarr.open_array(str(tmp_path / "whole" / "crops.zarr"), mode="r")[:]
    b = zarr.open_array(str(tmp_path / "again" / "crops.zarr"), mode="r")[:]
    np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "whole" / "cells.parquet"),
                                  pd.read_parquet(tmp_path / "again" / "cells.parquet"))
    assert whole.crops == 4 * 109
    with pytest.raises(ValueError, match="another configuration"):
        crop_index(idx, locs, tmp_path / "again", box_size=32, edge="pad", chunk_cells=64, progress=False)


def test_bad_index_and_locations(tmp_path):
    with pytest.raises(KeyError, match="channel 'DNA'"):
        read_image_index(pd.DataFrame({"Metadata_Plate": [1], "Metadata_Well": ["A01"], "Metadata_Site": [1]}), ["DNA"])
    with pytest.raises(FileNotFoundError, match="locations file not found"):
        read_locations(tmp_path / "nope.csv")
    pd.DataFrame({"a": [1.0]}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(KeyError, match="no nucleus centre columns"):
        read_locations(tmp_path / "l.csv")
    with pytest.raises(ValueError, match="edge must be one of"):
        crop_index(_index(1), _locations(1), tmp_path / "o", edge="wrap")


def test_synth_then_crop_from_the_cli(tmp_path, capsys):
    """The synthetic plate feeds the crop stage end to end: every ground-truth nucleus gets a row, inside crops
    are centred on bright DNA, and a rerun resumes (nothing redone)."""
    import json

    import zarr

    from phenovec.cli import main

    assert main(["synth", "--out", str(tmp_path / "plate"), "--wells", "4", "--sites", "1", "--size", "128",
                 "--cells", "5", "8", "--quiet"]) == 0
    capsys.readouterr()
    args = ["crop", str(tmp_path / "plate" / "index.csv"), "--locations", str(tmp_path / "plate" / "nuclei.csv"),
            "--out", str(tmp_path / "crops"), "--box-size", "24", "--edge", "pad", "--chunk-cells", "8", "--quiet"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    nuclei = pd.read_csv(tmp_path / "plate" / "nuclei.csv")
    cells = pd.read_parquet(tmp_path / "crops" / "cells.parquet")
    assert first["cells"] == len(cells) == len(nuclei) and first["resumed_sites"] == 0
    assert set(cells["edge"]) <= {"inside", "padded"}
    crops = zarr.open_array(str(tmp_path / "crops" / "crops.zarr"), mode="r")[:]
    dna = crops[:, 0].astype(float)
    centre = dna[:, 10:14, 10:14].mean(axis=(1, 2))
    corner = dna[:, :3, :3].mean(axis=(1, 2))
    inside = (cells["edge"] == "inside").to_numpy()
    assert (centre[inside] > corner[inside]).mean() > 0.9  # nuclei are where the table says
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["resumed_sites"] == again["sites"] == 4


def test_locations_from_cellprofiler_sqlite():
    """ExportToDatabase layout (NF1 Schwann cells): Per_Nuclei centres + object numbers, site keys via Per_Image."""
    import sqlite3

    db = SHARED_DATA / "cytotable-nf1-sqlite" / "all_cellprofiler.sqlite"
    loc = read_locations(db)
    with sqlite3.connect(db) as con:
        ref = pd.read_sql_query(
            "select n.Nuclei_Number_Object_Number as o, n.Nuclei_Location_Center_X as x, n.Nuclei_Location_Center_Y as y, "
            "i.Image_Metadata_Well as w, i.Image_Metadata_Site as s from Per_Nuclei n join Per_Image i "
            "on n.ImageNumber = i.ImageNumber", con)
    assert len(loc) == len(ref) == 433
    np.testing.assert_array_equal(loc["ObjectNumber"].to_numpy(), ref["o"].to_numpy())
    np.testing.assert_allclose(loc[["x", "y"]].to_numpy(), ref[["x", "y"]].to_numpy())
    assert (loc["Metadata_Well"].to_numpy() == ref["w"].to_numpy()).all()
    assert (loc["Metadata_Site"].astype(str).to_numpy() == ref["s"].astype(str).to_numpy()).all()


@pytest.mark.parametrize("name", ["examplehuman", "pediatric"])
def test_real_sites_crop_like_numpy_slicing(tmp_path, name):
    """Other real fields: CellProfiler ExampleHuman (3 x 8-bit 512 x 512, 289 nuclei) and a 6-channel
    pediatric-atlas site (incl. brightfield, 1080 x 1080 16-bit, 5 cells). Inside crops == tifffile + slicing."""
    import tifffile
    import zarr

    if name == "examplehuman":
        d = SHARED_DATA / "cytotable-examplehuman"
        files = {c: f"AS_09125_050116030001_D03f00d{k}.tif" for k, c in enumerate(["DNA", "PH3", "Cell"])}
        loc = read_locations(d / "Nuclei.csv")
        box = 32
    else:
        d = SHARED_DATA / "cytodataframe-pediatric-6ch" / "images" / "orig"
        names = ["Brightfield", "ER", "AGP", "Mito", "DNA", "RNA"]
        files = {c: f"r03c03f03p01-ch{k + 1}sk1fk1fl1.tiff" for k, c in enumerate(names)}
        loc = read_locations(SHARED_DATA / "cytodataframe-pediatric-6ch" / "BR00143976_shrunken.parquet")
        box = 96
    row = {"Metadata_Plate": "p", "Metadata_Well": "w", "Metadata_Site": 1, **{f"FileName_{c}": f for c, f in files.items()}}
    idx = read_image_index(pd.DataFrame([row]), list(files), root=d)
    crop_index(idx, loc, tmp_path / "o", box_size=box, edge="drop", progress=False)
    cells = pd.read_parquet(tmp_path / "o" / "cells.parquet")
    crops = zarr.open_array(str(tmp_path / "o" / "crops.zarr"), mode="r")[:]
    imgs = np.stack([tifffile.imread(d / f) for f in files.values()])
    assert len(cells) == len(loc) and (cells["edge"] == "inside").sum() >= 0.6 * len(cells)
    for _, c in cells[cells["row"] >= 0].iterrows():
        r0 = int(np.floor(c["y"] + 0.5)) - box // 2
        c0 = int(np.floor(c["x"] + 0.5)) - box // 2
        np.testing.assert_array_equal(crops[c["row"]], imgs[:, r0 : r0 + box, c0 : c0 + box])
