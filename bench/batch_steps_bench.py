"""The JUMP recipe's batch steps on a large table: ``phenovec process batch STEP`` against the recipe's own code, side
by side, each in a fresh child process (wall time and peak RSS from the child's rusage), outputs compared.

    python bench/batch_steps_bench.py --n 300000 --d 500 --steps subtract_well_mean rank_int

The table: ``n`` rows x ``d`` float32 features (``Cells_f*``), ``Metadata_Plate`` and ``Metadata_Well`` (384 wells a
plate), written once as Parquet. The peer is the recipe's code (broadinstitute/jump-profiling-recipe,
``preprocessing``: ``subtract_well_mean`` = the features minus ``groupby("Metadata_Well").transform("mean")``;
``rank_int`` = ``rank_int_array`` over the feature block, Blom's c = 3/8, stochastic ties with seed 0), reading and
writing the same Parquet files with pandas. phenovec runs its CLI. Output: one JSON document (``--out`` too) with
each step's seconds, peak RSS, ratios and the max abs difference of the outputs (compared in float64: the recipe's
pandas keeps float32 columns float32 for the well mean and makes the rank transform float64).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import emit_document  # noqa: E402

STEPS = ("subtract_well_mean", "rank_int")


def make_table(path: Path, n: int, d: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    wells = [f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]
    plates = n // len(wells) + 1
    df = pd.DataFrame(rng.normal(size=(n, d)).astype(np.float32), columns=[f"Cells_f{i}" for i in range(d)])
    df.insert(0, "Metadata_Plate", np.repeat([f"P{i}" for i in range(plates)], len(wells))[:n])
    df.insert(1, "Metadata_Well", np.tile(wells, plates)[:n])
    df.to_parquet(path)


def peer_step(step: str, src: str, dst: str) -> None:
    """The recipe's code for ``step`` (its pandas / scipy operations as written there), Parquet in and out."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    df = pd.read_parquet(src)
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    if step == "subtract_well_mean":
        mean_ = df.groupby("Metadata_Well")[feats].transform("mean").values
        df[feats] = df[feats].values - mean_
    else:  # rank_int_array(dframe[feats].values), c = 3/8, stochastic, seed 0
        array = df[feats].values
        c = 3.0 / 8
        perm = np.random.default_rng(seed=0).permutation(array.shape[0])
        ranks = rankdata(array[perm], method="ordinal", axis=0)[np.argsort(perm)]
        df[feats] = ndtri((ranks - c) / (len(ranks) - 2 * c + 1))
    df.to_parquet(dst)


def compare_outputs(peer_path: str, ours_path: str) -> dict:
    p, o = pd.read_parquet(peer_path), pd.read_parquet(ours_path)
    feats = [c for c in p.columns if not c.startswith("Metadata_")]
    diff = float(np.abs(p[feats].to_numpy(np.float64) - o[feats].to_numpy(np.float64)).max())
    return {"max_abs_diff": diff, "output_dtype": {"peer": str(p[feats[0]].dtype), "phenovec": str(o[feats[0]].dtype)}}


def run_child(argv: list[str], timeout: float) -> dict:
    """Wall seconds and peak RSS (MB) of one child process (its own rusage)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            return {"error": f"timed out after {timeout:.0f} s"}
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {err[-1500:]}"}
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--make-child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--compare-child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--d", type=int, default=500)
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--tmp", help="work folder (default: a temporary folder, removed at the end)")
    ap.add_argument("--out", help="also write the JSON document here")
    a = ap.parse_args(argv)
    if a.peer_child:
        peer_step(*a.peer_child)
        return 0
    if a.compare_child:
        Path(a.compare_child[2]).write_text(json.dumps(compare_outputs(*a.compare_child[:2])))
        return 0
    if a.make_child:
        make_table(Path(a.make_child[0]), int(a.make_child[1]), int(a.make_child[2]))
        return 0
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        tmp = Path(tmp)
        src = tmp / "table.parquet"
        # the table made and the outputs compared in children too: Linux carries a process's peak RSS across fork +
        # exec, so a parent that had held the tables would lend its peak to every child measured after it
        made = run_child([sys.executable, __file__, "--make-child", str(src), str(a.n), str(a.d)], a.timeout)
        if "error" in made:
            raise SystemExit(f"making the table: {made['error']}")
        results, agree = [], True
        for step in a.steps:
            peer_out, ours_out = tmp / f"{step}.peer.parquet", tmp / f"{step}.phenovec.parquet"
            peer = run_child([sys.executable, __file__, "--peer-child", step, str(src), str(peer_out)], a.timeout)
            ours = run_child([sys.executable, "-m", "phenovec.cli", "process", "batch", step, str(src), "-o",
                              str(ours_out), "--quiet"], a.timeout)
            row = {"step": step, "peer": peer, "phenovec": ours}
            if "error" not in peer and "error" not in ours:
                cmp_path = tmp / f"{step}.compare.json"
                done = run_child([sys.executable, __file__, "--compare-child", str(peer_out), str(ours_out),
                                  str(cmp_path)], a.timeout)
                if "error" in done:
                    raise SystemExit(f"comparing the outputs of {step}: {done['error']}")
                cmp = json.loads(cmp_path.read_text())
                diff = cmp["max_abs_diff"]
                # the recipe's well mean in float32 pandas against phenovec's float64 mean rounded once to float32
                tol = 1e-5 if step == "subtract_well_mean" else 1e-6
                row.update(max_abs_diff=diff, agreement=diff <= tol, speedup=peer["seconds"] / ours["seconds"],
                           memory_ratio=peer["peak_rss_mb"] / ours["peak_rss_mb"], output_dtype=cmp["output_dtype"])
                agree &= row["agreement"]
                print(f"{step}: recipe {peer['seconds']:.1f} s / {peer['peak_rss_mb']:.0f} MB, phenovec "
                      f"{ours['seconds']:.1f} s / {ours['peak_rss_mb']:.0f} MB, max abs diff {diff:.2g}",
                      file=sys.stderr)
            else:
                agree = False
            results.append(row)
        doc = {"benchmark": "batch_steps", "n": a.n, "d": a.d, "table_mb": a.n * a.d * 4 / 2**20,
               "results": results, "agreement": agree}
        emit_document(doc, a.out)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
