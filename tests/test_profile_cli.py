"""``phenovec profile`` argument parsing and run (through ``add_profile_parser``; cli.py registers the same)."""
import argparse
import json

import numpy as np
import pandas as pd
import pytest

from phenovec.io.embeddings import EmbeddingStore
from phenovec.profile.command import add_profile_parser
from test_profile import CHANNELS, calibrated_model, make_plate_and_model


def test_profile_command(tmp_path, capsys):
    plate, onnx_path = make_plate_and_model(tmp_path)
    parser = argparse.ArgumentParser()
    add_profile_parser(parser.add_subparsers())
    a = parser.parse_args(["profile", str(onnx_path), "--index", str(plate["index"]), "--locations",
                           str(plate["nuclei"]), "-o", str(tmp_path / "out"), "--workers", "1", "--batch-size", "8",
                           "--dtype", "float32", "--no-progress"])
    a.run(a)
    summary = json.loads(capsys.readouterr().out)
    st = EmbeddingStore(tmp_path / "out" / "embeddings.zarr")
    cells = pd.read_parquet(tmp_path / "out" / "cells.parquet")
    assert summary["cells"] == len(pd.read_csv(plate["nuclei"])) == len(cells)
    assert summary["embedded"] == st.num_rows == int((cells["row"] >= 0).sum())
    assert st.array.dtype == np.float32 and summary["resumed_sites"] == 0


def test_profile_command_illumination(tmp_path, capsys):
    """--illumination reaches profile_sites: a model trained on corrected crops runs with it (the flat fields'
    hashes in the run's configuration) and is refused without it."""
    from phenovec.export import export_onnx
    from phenovec.ingest.illumination import compute_illumination, illumination_provenance
    from phenovec.ingest.index import read_image_index

    plate, _ = make_plate_and_model(tmp_path)
    compute_illumination(read_image_index(plate["index"], CHANNELS), tmp_path / "illum", progress=False)
    onnx_path = tmp_path / "corrected.onnx"
    export_onnx(calibrated_model(plate), onnx_path, channels=CHANNELS, crop_size=32, parity=False,
                intensity={"input_scaling": "minmax", "dtype_max": 65535.0, "crop_illumination": True})
    parser = argparse.ArgumentParser()
    add_profile_parser(parser.add_subparsers())
    args = ["profile", str(onnx_path), "--index", str(plate["index"]), "--locations", str(plate["nuclei"]),
            "--workers", "1", "--batch-size", "8", "--no-progress"]
    a = parser.parse_args([*args, "-o", str(tmp_path / "out"), "--illumination", str(tmp_path / "illum")])
    a.run(a)
    assert json.loads(capsys.readouterr().out)["embedded"] > 0
    config = json.loads((tmp_path / "out" / "manifest.json").read_text())["config"]
    plate_name = str(pd.read_csv(plate["index"])["Metadata_Plate"][0])
    prov = illumination_provenance(tmp_path / "illum", plate_name, CHANNELS)
    assert config["illumination"] == {plate_name: {f["channel"]: f["sha256"] for f in prov}}
    a = parser.parse_args([*args, "-o", str(tmp_path / "refused")])
    with pytest.raises(ValueError, match=r"corrected\.onnx: .*crop_illumination = true.*--illumination DIR"):
        a.run(a)


def test_profile_command_illumination_from_a_load_data_index(tmp_path, capsys):
    """--illumination index: the flat fields a Gallery load_data_with_illum CSV names (Illum<Ch>.npy, here the same
    files phenovec illum wrote) give the same embeddings as the illumination folder; an index naming none is an
    error."""
    from phenovec.export import export_onnx
    from phenovec.ingest.illumination import compute_illumination
    from phenovec.ingest.index import read_image_index

    plate, _ = make_plate_and_model(tmp_path)
    compute_illumination(read_image_index(plate["index"], CHANNELS), tmp_path / "illum", progress=False)
    onnx_path = tmp_path / "corrected.onnx"
    export_onnx(calibrated_model(plate), onnx_path, channels=CHANNELS, crop_size=32, parity=False,
                intensity={"input_scaling": "minmax", "dtype_max": 65535.0, "crop_illumination": True})
    t = pd.read_csv(plate["index"])
    root = plate["index"].parent
    ld = t[[c for c in t.columns if c.startswith("Metadata_")]].copy()
    for ch in CHANNELS:
        files = [(root / f).resolve() for f in t[f"FileName_{ch}"]]
        ld[f"FileName_Orig{ch}"] = [f.name for f in files]
        ld[f"PathName_Orig{ch}"] = [str(f.parent) for f in files]
        ld[f"FileName_Illum{ch}"] = [f"{p}_{ch}.npy" for p in t["Metadata_Plate"]]
        ld[f"PathName_Illum{ch}"] = [str(tmp_path / "illum" / str(p)) for p in t["Metadata_Plate"]]
    ld.to_csv(tmp_path / "load_data_with_illum.csv", index=False)
    parser = argparse.ArgumentParser()
    add_profile_parser(parser.add_subparsers())
    common = ["--locations", str(plate["nuclei"]), "--workers", "1", "--batch-size", "8", "--dtype", "float32",
              "--no-progress"]
    a = parser.parse_args(["profile", str(onnx_path), "--index", str(plate["index"]), *common, "-o",
                           str(tmp_path / "folder"), "--illumination", str(tmp_path / "illum")])
    a.run(a)
    a = parser.parse_args(["profile", str(onnx_path), "--index", str(tmp_path / "load_data_with_illum.csv"), *common,
                           "-o", str(tmp_path / "index"), "--illumination", "index",
                           "--image-cache", str(tmp_path / "cache")])
    a.run(a)
    capsys.readouterr()
    got = EmbeddingStore(tmp_path / "index" / "embeddings.zarr").array[:]
    want = EmbeddingStore(tmp_path / "folder" / "embeddings.zarr").array[:]
    assert got.shape == want.shape and got.shape[0] > 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    a = parser.parse_args(["profile", str(onnx_path), "--index", str(plate["index"]), *common, "-o",
                           str(tmp_path / "none"), "--illumination", "index"])
    with pytest.raises(ValueError, match="--illumination index: .* names no flat fields"):
        a.run(a)
