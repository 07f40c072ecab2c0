"""bench/symphony_bench.py and bench/harmony_bench.py judge their side-by-side check: a JSON document on stdout with
an ``agreement`` field, a warning on stderr and exit status 1 when phenovec and the peer disagree. Tiny sizes, in a
subprocess where the exit status is what is tested (a first run in a fresh Numba cache compiles Harmony's kernels)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"


def _bench(name: str, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True, timeout=400,
                          cwd=REPO)
    try:
        doc = json.loads(proc.stdout)  # the whole of stdout is the document
    except json.JSONDecodeError:
        pytest.fail(f"{name} did not print one JSON document (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                    f"{proc.stderr[-3000:]}")
    return proc, doc


@pytest.fixture
def bench_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))


SYMPHONY_TINY = ["--reference", "300", "--query", "100", "--pcs", "5", "--plates", "2", "--repeats", "1"]


def test_symphony_data_keep_every_rows_largest_coordinate_positive(bench_path):
    """symphonypy divides a query row by its largest coordinate (a row with none positive flips): with 5 PCs the
    first coordinate's +2 alone left some rows all negative."""
    from symphony_bench import synthetic

    for n, d, plates, prefix, seed in ((300, 5, 24, "R", 0), (100, 5, 2, "Q", 1), (2000, 2, 8, "Q", 3)):
        x, _ = synthetic(n, d, plates, prefix, seed)
        assert (x.max(axis=1) > 0).all(), (n, d)
        assert np.abs(x).max() <= 9.5


def test_symphony_bench_with_few_pcs_agrees():
    proc, doc = _bench("symphony_bench.py", *SYMPHONY_TINY, "--confidence")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert doc["agreement"] is True and doc["tolerance"] == 1e-9
    assert doc["reference_z_corr_max_rel_diff"] <= 1e-9
    assert [r["agreement"] for r in doc["runs"]] == [True]
    assert doc["runs"][0]["z_corr_max_rel_diff"] <= 1e-9
    assert doc["confidence"][0]["agreement"] is True and doc["confidence"][0]["metric_max_rel_diff"] <= 1e-9
    assert "DISAGREE" not in proc.stderr


def test_symphony_bench_reports_a_disagreement(bench_path, monkeypatch, capsys):
    """The check can fail: one query row with every coordinate negative (symphonypy flips it) is a disagreement,
    named on stderr."""
    import symphony_bench

    plain = symphony_bench.synthetic

    def one_row_negative(n, d, n_plates, prefix, seed):
        x, meta = plain(n, d, n_plates, prefix, seed)
        if prefix == "Q":
            x[0] = -1.0 - np.abs(x[0])
        return x, meta

    monkeypatch.setattr(symphony_bench, "synthetic", one_row_negative)
    doc = symphony_bench.main(SYMPHONY_TINY)
    assert doc["agreement"] is False and doc["runs"][0]["agreement"] is False
    assert doc["runs"][0]["z_corr_max_rel_diff"] > 1e-3
    err = capsys.readouterr().err
    assert "DISAGREE" in err and "100 query cells x 2 plates" in err


def test_harmony_bench_prints_its_document_and_agrees_exactly():
    proc, doc = _bench("harmony_bench.py", "--cells", "300", "--pcs", "5", "--repeats", "1", "--device", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert doc["device"] is None and doc["agreement"] is True
    (run,) = doc["runs"]
    assert run["cells"] == 300 and run["agreement"] is True
    assert run["z_corr_max_rel_diff"] == 0.0
    assert run["iterations"]["harmonypy"] == run["iterations"]["phenovec"]
    assert "300 cells x 5 PCs" in proc.stderr  # the prose line, on stderr


def test_harmony_bench_judgement(bench_path):
    from harmony_bench import TORCH_Z_REL, judge

    same, other = {"harmonypy": 8, "phenovec": 8}, {"harmonypy": 8, "phenovec": 10}
    assert judge(0.0, same, None)
    assert not judge(1e-16, same, None)  # the exact path: harmonypy's bits
    assert not judge(0.0, other, None)
    assert judge(TORCH_Z_REL, same, "cpu") and not judge(3.6e-5, same, "cpu")
    assert not judge(1e-7, other, "cpu")  # another iteration count is not excused on a torch device
    assert not judge(math.nan, same, None) and not judge(math.nan, same, "cuda")
