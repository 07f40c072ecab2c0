"""LoadData CSVs as the Cell Painting Gallery ships them (phenovec.ingest.load_data) read as an image index.

The CSVs are written here from a ``phenovec synth`` plate (``URL_Orig<Ch>``, ``PathName_Orig<Ch>`` +
``FileName_Orig<Ch>``, ``Illum<Ch>`` flat fields, JUMP metadata); images by path, ``file:`` URL and fsspec's
``memory://``. The real CellProfiler Image table of CPJUMP1 BR00116991 A01 site 1 (../shared/data) gives the
Gallery's column layout and channel-to-file map on real pixels.
"""
from __future__ import annotations

import json
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
import zarr

from phenovec.ingest.crop import crop_index
from phenovec.ingest.index import read_image_index
from phenovec.ingest.load_data import read_load_data
from phenovec.ingest.synth import CHANNELS, synth_plate

from conftest import shared


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    paths = synth_plate(out, plates=2, wells=2, sites_per_well=1, size=96, cells_per_site=(5, 8), seed=3,
                        progress=False)
    return {"dir": out, "index": paths["index"], "nuclei": paths["nuclei"], "table": pd.read_csv(paths["index"])}


def _gallery_table(plate, how: str) -> pd.DataFrame:
    """The synth index written the Gallery's way: JUMP metadata + per channel ``URL_Orig<Ch>`` (``how`` = "uri":
    ``file:///``, "cellprofiler": ``file:/``) or ``PathName_Orig<Ch>`` + ``FileName_Orig<Ch>`` ("path")."""
    t = plate["table"]
    df = pd.DataFrame({"Metadata_Source": "source_0", **{c: t[c] for c in t.columns if c.startswith("Metadata_")}})
    for ch in CHANNELS:
        files = [(plate["dir"] / f).resolve() for f in t[f"FileName_{ch}"]]
        if how == "path":
            df[f"FileName_Orig{ch}"] = [f.name for f in files]
            df[f"PathName_Orig{ch}"] = [str(f.parent) for f in files]
        elif how == "uri":
            df[f"URL_Orig{ch}"] = [f.as_uri() for f in files]
        else:
            df[f"URL_Orig{ch}"] = ["file:" + str(f) for f in files]
    return df


def _crops(index, plate, out, **kw) -> np.ndarray:
    res = crop_index(index, plate["nuclei"], out, box_size=24, progress=False, **kw)
    return zarr.open_array(str(res.out / "crops.zarr"), mode="r")[:]


@pytest.mark.parametrize("how", ["path", "uri", "cellprofiler"])
def test_load_data_gives_the_index_of_the_same_images(plate, tmp_path, how):
    csv = tmp_path / "load_data.csv"
    _gallery_table(plate, how).to_csv(csv, index=False)
    ld = read_image_index(csv, CHANNELS)  # the Gallery layout is recognised by the image index reader
    ours = read_image_index(plate["index"], CHANNELS)
    assert ld.channels == list(CHANNELS)
    assert [[Path(p).resolve() for p in r] for r in ld.paths] == [[Path(p).resolve() for p in r] for r in ours.paths]
    assert list(ld.sites["Metadata_Source"]) == ["source_0"] * len(ours)
    assert ld.illumination is None
    np.testing.assert_array_equal(_crops(ld, plate, tmp_path / "a"), _crops(ours, plate, tmp_path / "b"))


def test_channel_names_with_and_without_orig_and_default_channels(plate, tmp_path):
    csv = tmp_path / "load_data.csv"
    _gallery_table(plate, "path").to_csv(csv, index=False)
    a = read_load_data(csv, ["OrigMito", "DNA"])
    assert a.channels == ["Mito", "DNA"]
    assert [Path(p).name for p in a.paths[0]] == [Path(plate["table"][f"FileName_{c}"][0]).name for c in ("Mito", "DNA")]
    assert read_load_data(csv).channels == list(CHANNELS)  # the five Cell Painting channels by default


def _to_memory(plate, root: str) -> pd.DataFrame:
    """Copy the plate's images into fsspec's memory filesystem; the Gallery table naming them by URL."""
    fs = fsspec.filesystem("memory")
    df = _gallery_table(plate, "path")
    for ch in CHANNELS:
        for i, (d, f) in enumerate(zip(df[f"PathName_Orig{ch}"], df[f"FileName_Orig{ch}"])):
            fs.pipe(f"{root}/images/{f}", (Path(d) / f).read_bytes())
        df[f"PathName_Orig{ch}"] = f"memory://{root}/images"
    return df


def test_memory_urls_are_fetched_once_into_the_cache(plate, tmp_path):
    df = _to_memory(plate, "gallery-a")
    with fsspec.open("memory://gallery-a/load_data.csv", "w") as f:
        df.to_csv(f, index=False)
    cache = tmp_path / "cache"
    ld = read_load_data("memory://gallery-a/load_data.csv", cache=cache)
    assert all(Path(p).is_relative_to(cache) for r in ld.paths for p in r)
    ours = read_image_index(plate["index"], CHANNELS)
    for r_ld, r_ours in zip(ld.paths, ours.paths):
        assert [Path(p).read_bytes() for p in r_ld] == [Path(p).read_bytes() for p in r_ours]
    np.testing.assert_array_equal(_crops(ld, plate, tmp_path / "a"), _crops(ours, plate, tmp_path / "b"))
    # a second read finds the copies: the store may be gone
    fsspec.filesystem("memory").rm("memory://gallery-a/images", recursive=True)
    again = read_load_data("memory://gallery-a/load_data.csv", cache=cache)
    assert again.paths == ld.paths


def test_illum_flat_fields_are_reused_as_is(plate, tmp_path):
    """load_data_with_illum: each plate's Illum<Ch>.npy divides its raw images (CellProfiler's Divide)."""
    df = _gallery_table(plate, "path")
    rng = np.random.default_rng(0)
    flats = {}
    for p in df["Metadata_Plate"].unique():
        (tmp_path / "illum" / p).mkdir(parents=True)
        for ch in CHANNELS:
            flats[(p, ch)] = (1 + rng.random((96, 96))).astype(np.float64)  # CellProfiler saves float64
            np.save(tmp_path / "illum" / p / f"{p}_Illum{ch}.npy", flats[(p, ch)])
    for ch in CHANNELS:
        df[f"FileName_Illum{ch}"] = [f"{p}_Illum{ch}.npy" for p in df["Metadata_Plate"]]
        df[f"PathName_Illum{ch}"] = [str(tmp_path / "illum" / p) for p in df["Metadata_Plate"]]
    csv = tmp_path / "load_data_with_illum.csv"
    df.to_csv(csv, index=False)
    ld = read_load_data(csv)
    assert sorted(ld.illumination) == sorted(flats)
    raw = _crops(ld, plate, tmp_path / "raw", edge="pad").astype(np.float64)
    corrected = _crops(ld, plate, tmp_path / "flat", edge="pad", illumination=ld.illumination)
    cells = pd.read_parquet(tmp_path / "flat" / "cells.parquet")
    for k, cell in cells.iterrows():
        r0, c0 = int(np.floor(cell.y + 0.5)) - 12, int(np.floor(cell.x + 0.5)) - 12
        for ci, ch in enumerate(CHANNELS):
            f = np.pad(flats[(str(cell.Metadata_Plate), ch)], 24, constant_values=1)[r0 + 24:r0 + 48, c0 + 24:c0 + 48]
            np.testing.assert_allclose(corrected[k, ci], raw[k, ci] / f.astype(np.float32), rtol=2e-6, atol=1e-5)
    # one flat field per plate x channel
    df.loc[1, "FileName_IllumDNA"] = "other.npy"
    df.loc[1, "Metadata_Plate"] = df.loc[0, "Metadata_Plate"]
    df.to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"row 1 column FileName_IllumDNA: plate .* one flat field per plate"):
        read_load_data(csv)


def test_crop_cli_runs_on_a_gallery_csv_with_its_flat_fields(plate, tmp_path, capsys):
    from phenovec.cli import main

    df = _gallery_table(plate, "uri")
    for ch in CHANNELS:
        for p in df["Metadata_Plate"].unique():
            (tmp_path / "illum").mkdir(exist_ok=True)
            np.save(tmp_path / "illum" / f"{p}_Illum{ch}.npy", np.full((96, 96), 2.0))
        df[f"URL_Illum{ch}"] = [(tmp_path / "illum" / f"{p}_Illum{ch}.npy").as_uri() for p in df["Metadata_Plate"]]
    df.to_csv(tmp_path / "load_data_with_illum.csv", index=False)
    args = ["crop", str(tmp_path / "load_data_with_illum.csv"), "--locations", str(plate["nuclei"]), "--out",
            str(tmp_path / "crops"), "--box-size", "24", "--illumination", "index", "--quiet"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    halves = zarr.open_array(str(tmp_path / "crops" / "crops.zarr"), mode="r")[:]
    raw = _crops(read_image_index(plate["index"], CHANNELS), plate, tmp_path / "raw")
    assert summary["crops"] == len(raw)
    np.testing.assert_array_equal(halves, raw.astype(np.float32) / 2)
    # --illumination index on an index without flat fields
    _gallery_table(plate, "uri").to_csv(tmp_path / "load_data.csv", index=False)
    args[1], args[5] = str(tmp_path / "load_data.csv"), str(tmp_path / "crops2")
    assert main(args) != 0
    assert "names no flat fields" in capsys.readouterr().err


@pytest.mark.parametrize("case, error, match", [
    ("no_column", KeyError, r"load_data.csv: no column for channel 'Mito' \(expected URL_OrigMito"),
    ("empty_file", ValueError, r"load_data.csv: row 1 column FileName_OrigER: empty"),
    ("missing_file", FileNotFoundError, r"load_data.csv: row 0 column FileName_OrigRNA: .*nope.tif"),
    ("bad_url", FileNotFoundError, r"load_data.csv: row 1 column URL_OrigAGP: memory://nowhere/x.tif: not found"),
    ("no_site", KeyError, r"load_data.csv: missing site column 'Metadata_Well'"),
])
def test_bad_load_data_names_file_row_and_column(plate, tmp_path, case, error, match):
    df = _gallery_table(plate, "path")
    if case == "no_column":
        df = df.drop(columns=["FileName_OrigMito", "PathName_OrigMito"])
    elif case == "empty_file":
        df.loc[1, "FileName_OrigER"] = ""
    elif case == "missing_file":
        df.loc[0, "FileName_OrigRNA"] = "nope.tif"
    elif case == "bad_url":
        df = df.drop(columns=["FileName_OrigAGP", "PathName_OrigAGP"])
        df["URL_OrigAGP"] = [Path(plate["dir"] / plate["table"]["FileName_AGP"][0]).resolve().as_uri(),
                             "memory://nowhere/x.tif", "memory://nowhere/y.tif", "memory://nowhere/z.tif"]
    elif case == "no_site":
        df = df.drop(columns=["Metadata_Well"])
    df.to_csv(tmp_path / "load_data.csv", index=False)
    with pytest.raises(error, match=match):
        read_load_data(tmp_path / "load_data.csv", CHANNELS, cache=tmp_path / "cache")


def test_real_cpjump1_image_table(tmp_path):
    """CellProfiler's Image table of a real Gallery site (CPJUMP1 BR00116991 A01 f01; images from the
    DeepProfiler sdist): its Metadata_* and FileName_Orig<Ch> columns, relocated to the shared images, read as an
    index whose channels are the files CellProfiler used (DNA = ch5, Mito = ch1 ...); crops equal a hand-made
    index of those files."""
    table = pd.read_csv(shared("cytotable-cpjump1-site-cellprofiler", "Image.csv"))
    images = shared("deepprofiler-cpjump1-site")
    keep = [c for c in table.columns if c.startswith("Metadata_")
            or c in {f"{k}_Orig{ch}" for k in ("FileName", "URL") for ch in CHANNELS}]
    df = table[keep].copy()
    for ch in CHANNELS:  # the Gallery's file: URLs, moved to where the images are here
        df[f"URL_Orig{ch}"] = "file:" + str(images / df[f"FileName_Orig{ch}"].iloc[0])
        df = df.drop(columns=[f"FileName_Orig{ch}"])
    df.to_csv(tmp_path / "load_data.csv", index=False)
    ld = read_load_data(tmp_path / "load_data.csv")
    assert [Path(p).name for p in ld.paths[0]] == [
        f"r01c01f01p01-ch{n}sk1fk1fl1.tiff" for n in (5, 4, 3, 2, 1)]  # DNA ER RNA AGP Mito
    assert tuple(ld.sites.iloc[0][["Metadata_Plate", "Metadata_Well", "Metadata_Site"]]) == ("BR00116991", "A01", 1)
    nuclei = pd.read_csv(images / "Nuclei.csv", usecols=["ObjectNumber", "AreaShape_Center_X", "AreaShape_Center_Y"])
    nuclei.to_csv(tmp_path / "nuclei.csv", index=False)
    hand = pd.DataFrame({"Metadata_Plate": ["BR00116991"], "Metadata_Well": ["A01"], "Metadata_Site": [1],
                         **{f"FileName_{ch}": [p] for ch, p in zip(CHANNELS, ld.paths[0])}})
    a = crop_index(ld, tmp_path / "nuclei.csv", tmp_path / "a", box_size=64, progress=False)
    b = crop_index(read_image_index(hand, CHANNELS), tmp_path / "nuclei.csv", tmp_path / "b", box_size=64,
                   progress=False)
    assert a.crops > 50
    np.testing.assert_array_equal(zarr.open_array(str(a.out / "crops.zarr"))[:],
                                  zarr.open_array(str(b.out / "crops.zarr"))[:])


def test_frame_columns_pick_pages_of_one_multipage_tiff(plate, tmp_path):
    """``Frame_Orig<Ch>``: every channel of a site in one multi-page TIFF (page = channel)."""
    import tifffile

    from phenovec import _core

    ours = read_image_index(plate["index"], CHANNELS)
    df = _gallery_table(plate, "path").drop(columns=[f"{k}_Orig{c}" for k in ("FileName", "PathName") for c in CHANNELS])
    order = list(reversed(CHANNELS))  # pages stored in another order than the channels are asked
    for s in range(len(ours)):
        tifffile.imwrite(tmp_path / f"site{s}.tif", np.stack([_core.decode_image(ours.paths[s][CHANNELS.index(c)])
                                                              for c in order]))
    for c in CHANNELS:
        df[f"FileName_Orig{c}"] = [f"site{s}.tif" for s in range(len(ours))]
        df[f"Frame_Orig{c}"] = order.index(c)
    df.to_csv(tmp_path / "load_data.csv", index=False)
    ld = read_load_data(tmp_path / "load_data.csv")
    assert ld.site_frames(0) == [order.index(c) for c in CHANNELS]
    np.testing.assert_array_equal(_crops(ld, plate, tmp_path / "a"), _crops(ours, plate, tmp_path / "b"))


def test_profile_runs_on_a_gallery_csv(plate, tmp_path):
    """``profile`` reads the LoadData CSV like an index: the same embeddings as from the synth index."""
    from phenovec.export import export_onnx
    from phenovec.profile import profile_sites
    from phenovec.train.models import build_model

    onnx = tmp_path / "m.onnx"
    export_onnx(build_model("resnet_tiny", len(CHANNELS), 3, seed=0).eval(), onnx, channels=list(CHANNELS),
                crop_size=32, intensity={"input_scaling": "minmax", "dtype_max": 65535.0}, parity=False)
    csv = tmp_path / "load_data.csv"
    _gallery_table(plate, "uri").to_csv(csv, index=False)
    a = profile_sites(onnx, csv, plate["nuclei"], tmp_path / "a", progress=False)
    b = profile_sites(onnx, plate["index"], plate["nuclei"], tmp_path / "b", progress=False)
    assert a.embedded == b.embedded > 0
    za, zb = (zarr.open_group(str(r.out / "embeddings.zarr"), mode="r") for r in (a, b))
    np.testing.assert_array_equal(za["features"][:], zb["features"][:])


def test_fetch_false_keeps_urls_and_copies_site_by_site(plate, tmp_path):
    df = _to_memory(plate, "gallery-lazy")
    df.loc[2, "FileName_OrigDNA"] = "missing.tif"  # only fetching site 2 finds it missing
    with fsspec.open("memory://gallery-lazy/load_data.csv", "w") as f:
        df.to_csv(f, index=False)
    cache = tmp_path / "cache"
    ld = read_load_data("memory://gallery-lazy/load_data.csv", cache=cache, fetch=False)
    assert all(p.startswith("memory://gallery-lazy/images/") for r in ld.paths for p in r)
    assert not cache.exists()  # nothing copied yet
    ours = read_image_index(plate["index"], CHANNELS)
    local = ld.site_paths(1)
    assert [Path(p).read_bytes() for p in local] == [Path(p).read_bytes() for p in ours.paths[1]]
    assert len(list(cache.iterdir())) == len(CHANNELS)  # that site's images only
    with pytest.raises(FileNotFoundError, match=r"load_data.csv: site 2 channel DNA: memory://.*missing.tif: not found"):
        ld.site_paths(2)
    with pytest.raises(FileNotFoundError, match=r"load_data.csv: row 2 column FileName_OrigDNA: memory://"):
        read_load_data("memory://gallery-lazy/load_data.csv", cache=cache)  # fetch=True: found when read
