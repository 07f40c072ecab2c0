"""DeepProfiler 0.5.1 itself as the sequential peer of ``profile_bench.py``: its ``profile`` command on our plate.

DeepProfiler (PyPI ``deepprofiler==0.5.1``, TensorFlow 2.15) cannot share phenovec's environment (numpy < 2,
pandas < 3, TensorFlow < 2.16), so it runs in its own cached venv (``tests/peer_venv.py``, name
``deepprofiler-0.5.1``; built once from PyPI) as a subprocess, and the data go through files:

- :func:`write_project` lays out a DeepProfiler project for the first ``sites`` sites of a phenovec image index
  and nuclei table: ``inputs/metadata/index.csv`` (one column per channel holding the image's absolute path),
  ``inputs/locations/{Plate}/{Well}-{Site}-Nuclei.csv`` and a config for EfficientNet-B0 (``conv_blocks`` 0) on
  ``box`` px crops of the 5 channels, profiled at its 1,280-d ``pool5`` layer (the global average pool, the
  layer phenovec's exported ``features`` are) with ``profile.batch_size`` = ``batch``, no checkpoint (random
  weights: throughput only), no compression (16-bit TIFFs read as they are);
- :data:`DRIVER` runs, in the peer venv, what ``deepprofiler profile`` runs (``read_dataset(config, "profile")``,
  ``Profile(config, dset).configure()``, ``dset.scan(profile.extract_features, frame="all", check=profile.check)``)
  ``repeats`` times in one process (``CONFIG`` and ``REPEATS`` prepended by :func:`run_deepprofiler`), deleting the features folder before each scan (DeepProfiler skips sites
  whose ``.npz`` exists), and times the import, the model build and each scan; during the last scan it also
  times DeepProfiler's stages (``pixels.openImage``, the TF1 crop graph ``prepare_image``, Keras ``predict``,
  ``np.savez_compressed``). It prints one ``RESULT`` line of JSON.

DeepProfiler embeds every located cell (boxes over the edge are zero-filled), phenovec's bench drops them, so
rates are compared per embedded cell. TensorFlow uses its default thread pools (all cores).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"

DRIVER = r'''
import collections, glob, json, shutil, time
t0 = time.perf_counter()
import numpy as np
import deepprofiler.dataset.image_dataset as image_dataset
import deepprofiler.dataset.pixels as pixels
import deepprofiler.profiling as profiling
t_import = time.perf_counter() - t0

config = json.load(open(CONFIG))
repeats = REPEATS
t = time.perf_counter()
dset = image_dataset.read_dataset(config, mode="profile")
prof = profiling.Profile(config, dset)
prof.configure()
t_setup = time.perf_counter() - t

stages = collections.Counter()
def timed(name, fn):
    def run(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            stages[name] += time.perf_counter() - t
    return run

features = config["paths"]["features"]
scans = []
for r in range(repeats):
    shutil.rmtree(features, ignore_errors=True)
    if r == repeats - 1:  # the stage split, on the last scan (wrappers cost microseconds per site)
        image_dataset.deepprofiler.dataset.pixels.openImage = timed("read", pixels.openImage)
        prof.profile_crop_generator.prepare_image = timed("crop", prof.profile_crop_generator.prepare_image)
        prof.feat_extractor.predict = timed("predict", prof.feat_extractor.predict)
        np.savez_compressed = timed("write", np.savez_compressed)
    t = time.perf_counter()
    dset.scan(prof.extract_features, frame="all", check=prof.check)
    scans.append(time.perf_counter() - t)
files = sorted(glob.glob(features + "/*/*/*.npz"))
cells = sum(np.load(f, allow_pickle=True)["features"].shape[0] for f in files)
dim = int(np.load(files[0], allow_pickle=True)["features"].shape[1]) if files else 0
print("RESULT " + json.dumps({"import_s": t_import, "setup_s": t_setup, "scan_s": scans, "cells": int(cells),
                              "sites": len(files), "feature_dim": dim, "stages_last_scan_s": dict(stages)}))
'''


def write_project(index_csv: Path, nuclei_csv: Path, root: Path, channels: list[str], sites: int, box: int,
                  batch: int) -> tuple[Path, int]:
    """A DeepProfiler project for the first ``sites`` sites (module docstring); returns (config path, cells)."""
    import pandas as pd
    import tifffile

    index_csv, root = Path(index_csv), Path(root)
    base = index_csv.parent
    keys = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    for d in ("inputs/metadata", "inputs/locations", "outputs/bench/checkpoint"):
        (root / d).mkdir(parents=True, exist_ok=True)
    idx = pd.read_csv(index_csv).iloc[:sites].copy()
    for c in channels:
        idx[c] = [str((base / f).resolve()) for f in idx[f"FileName_{c}"]]
    idx.to_csv(root / "inputs/metadata/index.csv", index=False)
    nuclei = pd.read_csv(nuclei_csv)
    groups = {k: g for k, g in nuclei.groupby(keys, sort=False)}
    cells = 0
    for _, row in idx.iterrows():
        g = groups.get(tuple(row[keys]))
        if g is None:
            continue
        folder = root / "inputs/locations" / str(row["Metadata_Plate"])
        folder.mkdir(exist_ok=True)
        g[["Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"]].to_csv(
            folder / f"{row['Metadata_Well']}-{row['Metadata_Site']}-Nuclei.csv", index=False)
        cells += len(g)
    h, w = tifffile.imread(idx[channels[0]].iloc[0]).shape[:2]
    config = {
        "dataset": {"metadata": {"label_field": "Metadata_Treatment"},
                    "images": {"channels": list(channels), "file_format": "tif", "bits": 16, "width": int(w),
                               "height": int(h)},
                    "locations": {"mode": "single_cells", "box_size": box, "view_size": box, "mask_objects": False}},
        "prepare": {"compression": {"implement": False}},
        "train": {"partition": {"targets": ["Metadata_Treatment"]},
                  "model": {"crop_generator": "sampled_crop_generator", "params": {"conv_blocks": 0,
                                                                                  "batch_size": batch}},
                  "sampling": {"workers": 1, "factor": 1, "cache_size": 1}, "validation": {"batch_size": batch}},
        "profile": {"feature_layer": "pool5", "checkpoint": "None", "batch_size": batch},
        "paths": {"root": str(root) + "/", "index": str(root / "inputs/metadata/index.csv"), "images": "",
                  "metadata": str(root / "inputs/metadata"), "locations": str(root / "inputs/locations"),
                  "features": str(root / "outputs/bench/features"),
                  "checkpoints": str(root / "outputs/bench/checkpoint")},
    }
    path = root / "config.json"
    path.write_text(json.dumps(config, indent=1))
    return path, cells


def run_deepprofiler(config: Path, repeats: int, timeout: float = 3600) -> dict:
    """Run :data:`DRIVER` on ``config`` in the DeepProfiler peer venv (built on first use); its RESULT dict."""
    sys.path.insert(0, str(TESTS))
    from peer_venv import PeerVenvError, peer_python, run_peer

    python = peer_python("deepprofiler-0.5.1", timeout=1800, build=True)
    code = f"CONFIG = {str(config)!r}\nREPEATS = {int(repeats)}\n" + DRIVER
    lines = [ln for ln in run_peer(python, code, Path(config).parent, timeout=timeout).splitlines()
             if ln.startswith("RESULT ")]
    if not lines:
        raise PeerVenvError(f"DeepProfiler run on {config} printed no RESULT line")
    return json.loads(lines[-1][len("RESULT "):])
