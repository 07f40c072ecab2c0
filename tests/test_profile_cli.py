"""``phenovec profile`` argument parsing and run (through ``add_profile_parser``; cli.py registers the same)."""
import argparse
import json

import numpy as np
import pandas as pd

from phenovec.io.embeddings import EmbeddingStore
from phenovec.profile.command import add_profile_parser
from test_profile import make_plate_and_model


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
