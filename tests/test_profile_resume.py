"""phenovec.profile resumability: a run killed with SIGKILL mid-way (a subprocess) is finished by a rerun that
skips the committed sites and gives output identical to an uninterrupted run; a rerun with another model or
configuration is refused."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from phenovec.profile import profile_sites
from test_profile import assert_same_outputs, make_plate_and_model

# the child profiles one site per task, one task in flight, and is slowed to ~0.3 s per site (a test-side patch
# of the crop step) so the parent can kill it after a few committed sites
CHILD = textwrap.dedent("""
    import sys, time
    import phenovec.profile.sites as sites
    real = sites.cut_site
    def slow(*a, **k):
        time.sleep(0.3)
        return real(*a, **k)
    sites.cut_site = slow
    from phenovec.profile import profile_sites
    profile_sites(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], batch_size=1, workers=1, max_in_flight=1,
                  progress=False)
""")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    plate, onnx_path = make_plate_and_model(tmp)
    return tmp, plate, onnx_path


def test_sigkill_then_resume_identical(setup):
    tmp, plate, onnx_path = setup
    out = tmp / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(onnx_path), str(plate["index"]), str(plate["nuclei"]),
                             str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = out / "parts"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if parts.is_dir() and len(list(parts.glob("site-*.npz"))) >= 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"child ended before the kill: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(parts.glob("site-*.npz"))
    assert 4 <= len(done) < 12
    assert not (out / "embeddings.zarr").exists() and not (out / "wells_mean.parquet").exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in done}
    # what a writer killed during assembly leaves (the child's PID is dead now): removed on resume
    (out / f".embeddings.zarr.tmp{proc.pid}" / "features").mkdir(parents=True)
    (out / f".cells.parquet.tmp{proc.pid}").write_bytes(b"PAR1")

    res = profile_sites(onnx_path, plate["index"], plate["nuclei"], out, batch_size=1, workers=1, progress=False)
    assert res.resumed_sites == len(done) and res.sites == 12
    assert {p.name: p.stat().st_mtime_ns for p in done} == stamps  # finished sites were skipped, not redone
    assert not list(out.rglob(".*.tmp*"))

    profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp / "whole", batch_size=1, workers=1,
                  progress=False)
    assert_same_outputs(out, tmp / "whole")


def test_rerun_with_other_model_or_config_refused(setup):
    tmp, plate, onnx_path = setup
    out = tmp / "cfg"
    profile_sites(onnx_path, plate["index"], plate["nuclei"], out, batch_size=16, workers=1, progress=False)
    again = profile_sites(onnx_path, plate["index"], plate["nuclei"], out, batch_size=16, workers=1, progress=False)
    assert again.resumed_sites == 12
    with pytest.raises(ValueError, match=r"another configuration.*dtype"):
        profile_sites(onnx_path, plate["index"], plate["nuclei"], out, batch_size=16, dtype="float32",
                      progress=False)
    _, other = make_plate_and_model(tmp / "other", seed=1)
    with pytest.raises(ValueError, match=r"another configuration.*model_weights_sha256"):
        profile_sites(other, plate["index"], plate["nuclei"], out, batch_size=16, progress=False)


def test_stale_temporaries_removed_live_ones_kept(tmp_path):
    from phenovec.io.atomic import remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".embeddings.zarr.tmp{dead.pid}").mkdir()
    (tmp_path / f".embeddings.zarr.tmp{dead.pid}" / "zarr.json").write_text("{}")
    (tmp_path / f".cells.parquet.tmp{dead.pid}").write_bytes(b"PAR1")
    live = [tmp_path / f".wells_mean.parquet.tmp{os.getpid()}", tmp_path / f".other.npz.tmp{os.getppid()}"]
    for p in live:
        p.write_bytes(b"x")
    keep = [tmp_path / "cells.parquet", tmp_path / ".hidden", tmp_path / f"x.tmp{dead.pid}"]
    for p in keep:
        p.write_bytes(b"y")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".cells.parquet.tmp{dead.pid}",
                                                      f".embeddings.zarr.tmp{dead.pid}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in live + keep)
    assert remove_stale_temporaries(tmp_path / "missing") == []
