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
