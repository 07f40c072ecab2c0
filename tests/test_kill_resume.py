"""kill -9 mid-run, then rerun: the output is identical to an uninterrupted run's.

Covered here: ``phenovec crop`` and ``phenovec run`` (killed inside its profile stage). Covered elsewhere:
``phenovec train`` (``test_train_loop.py::test_exact_resume_after_kill_9``, from the CLI) and ``profile_sites``
(``test_profile_resume.py::test_sigkill_then_resume_identical``). Each child runs the CLI with its per-site work
slowed by a test-side patch, so the parent can kill it after a few committed sites.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from phenovec.cli import main

# the child: the CLI with its per-site work (crop_site for crop, cut_site for profile) slowed by SLOW_SECONDS
# (default 0.3 s) by a test-side patch
CHILD = textwrap.dedent("""
    import os, sys, time
    from phenovec import _core
    import phenovec.profile.sites as sites
    def slowed(real):
        def f(*a, **k):
            time.sleep(float(os.environ.get("SLOW_SECONDS", "0.3")))
            return real(*a, **k)
        return f
    _core.crop_site = slowed(_core.crop_site)
    sites.cut_site = slowed(sites.cut_site)
    from phenovec.cli import main
    raise SystemExit(main(sys.argv[1:]))
""")


def start_slowed(argv: list[str], seconds: float = 0.3) -> subprocess.Popen:
    """``phenovec ARGV`` in a child process whose per-site work is slowed by ``seconds``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "SLOW_SECONDS": str(seconds)}
    return subprocess.Popen([sys.executable, "-c", CHILD, *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (it must still be running then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if ready():
                break
        except (OSError, ValueError):  # a file being replaced as we read it
            pass
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> Path:
    from phenovec.ingest.synth import synth_plate

    root = tmp_path_factory.mktemp("kill")
    synth_plate(root / "plate", plates=1, wells=8, sites_per_well=1, size=96, cells_per_site=(4, 6),
                cell_radius=6.0, progress=False)
    return root / "plate"


def _crop_argv(plate: Path, out: Path) -> list[str]:
    return ["crop", str(plate / "index.csv"), "--locations", str(plate / "nuclei.csv"), "--out", str(out),
            "--box-size", "32", "--edge", "pad", "--chunk-cells", "4", "--quiet"]


def test_crop_killed_then_rerun_is_identical(plate, tmp_path, capsys):
    import zarr

    out = tmp_path / "killed"
    proc = start_slowed(_crop_argv(plate, out))
    _kill_when(proc, lambda: len(json.loads((out / "manifest.json").read_text())["done"]) >= 3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and 3 <= len(manifest["done"]) < 8 and not (out / "cells.parquet").exists()
    capsys.readouterr()
    assert main(_crop_argv(plate, out)) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["resumed_sites"] == len(manifest["done"]) and again["sites"] == 8
    assert main(_crop_argv(plate, tmp_path / "whole")) == 0
    a = zarr.open_array(str(out / "crops.zarr"), mode="r")
    b = zarr.open_array(str(tmp_path / "whole" / "crops.zarr"), mode="r")
    assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a[:], b[:])
    pd.testing.assert_frame_equal(pd.read_parquet(out / "cells.parquet"),
                                  pd.read_parquet(tmp_path / "whole" / "cells.parquet"))
    assert not list(out.rglob(".*tmp*")) and not (out / ".phenovec.lock").exists()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from phenovec.export import export_onnx
    from phenovec.train.models import build_model

    p = tmp_path_factory.mktemp("model") / "model.onnx"
    export_onnx(build_model("resnet_tiny", 5, 7, seed=0), p, channels=["DNA", "ER", "RNA", "AGP", "Mito"],
                crop_size=32, intensity={"input_scaling": "minmax", "dtype_max": 65535.0}, parity=False)
    return p


def _run_config(tmp: Path, out: Path, model: Path) -> Path:
    """A small ``phenovec run``: a synthetic plate profiled with a given model (no crop / train / export
    stages), one site per profile task."""
    cfg = {"out": str(out), "model": str(model),
           "synth": {"plates": 1, "wells": 14, "sites": 1, "size": 96, "cells": [6, 8], "seed": 1},
           "crop": {"box_size": 32}, "profile": {"batch_size": 8, "workers": 1}, "report": {"null_size": 50}}
    p = tmp / f"{out.name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_run_killed_in_profile_then_rerun_is_identical(model, tmp_path, capsys):
    from test_profile import assert_same_outputs

    out = tmp_path / "killed"
    cfg = _run_config(tmp_path, out, model)
    proc = start_slowed(["run", str(cfg)])
    parts = out / "profile" / "parts"
    _kill_when(proc, lambda: len(list(parts.glob("site-*.npz"))) >= 3)
    assert json.loads((out / "profile" / "stage.json").read_text())["complete"] is False
    assert not (out / "profile" / "embeddings.zarr").exists() and not (out / "process").exists()
    done = {p.name: p.stat().st_mtime_ns for p in parts.glob("site-*.npz")}
    assert main(["run", str(cfg)]) == 0
    assert {p: (parts / p).stat().st_mtime_ns for p in done} == done  # committed sites were not redone
    whole = tmp_path / "whole"
    assert main(["run", str(_run_config(tmp_path, whole, model))]) == 0
    capsys.readouterr()
    assert_same_outputs(out / "profile", whole / "profile")
    pd.testing.assert_frame_equal(pd.read_parquet(out / "process" / "profiles.parquet"),
                                  pd.read_parquet(whole / "process" / "profiles.parquet"))
    for stage in ("synth", "profile", "process"):
        assert json.loads((out / stage / "stage.json").read_text())["complete"] is True
