"""Harmony: phenovec.batch.run_harmony vs harmonypy 2.1.0, side by side in one process, same input, same seed.

    python bench/harmony_bench.py --cells 10000 100000 --pcs 50 --repeats 3 --json bench_harmony.json

Synthetic PCs: 12 cell states plus additive shifts from three batch variables (20 plates, 8 rows, 3 sources).
Each repeat runs harmonypy then phenovec (order alternating between repeats), reports wall-clock medians, the
ratio, the CPU seconds each used (``time.process_time``: all threads of the process; steadier than wall-clock on a
shared machine), and the result check: max |Z_corr difference| / max |Z_corr| and the objective trajectories. ``--ncores``
is passed to both (0: each library's default; harmonypy 2.1.0 uses one thread per physical core, phenovec
every Numba thread). Warm-up: two small phenovec runs first, one per ridge-sum path (Numba compiles or loads its
cache).

Prints the JSON document on stdout (``--json`` also writes it; each size's summary line goes to stderr as it
finishes). Each run's ``agreement``, and the document's (all runs), judges the check:

- the exact path (``--device`` left out or ``none``: the Numba kernels, harmonypy's bits): Z_corr max relative
  difference exactly 0 and the same number of Harmony iterations;
- a PyTorch device (``cpu``, ``cuda``, or ``auto`` where torch sees a GPU; other rounding than harmonypy's C++):
  Z_corr max relative difference at most ``TORCH_Z_REL`` (2e-6, the bound tests/test_batch_harmony_torch.py asserts
  on 600 cells) and the same number of iterations (the tests assert that too). Rounding can move the step where the
  objective's change falls under ``epsilon_harmony``; a run that stops at another iteration is reported as
  disagreement, not excused (1,000 cells x 50 PCs on torch's CPU: 3.6e-5 and 10 iterations against harmonypy's 8).

Where they disagree it warns on stderr and exits with status 1 (the document is still printed and written).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import emit_document, log  # noqa: E402

TORCH_Z_REL = 2e-6  # a torch device's Z_corr bound relative to harmonypy's largest entry (the torch tests' bound)


def judge(z_rel: float, iterations: dict, device) -> bool:
    """The run agrees with harmonypy: exactly (the Numba path, ``device`` None) or within ``TORCH_Z_REL`` (a torch
    device); the same number of Harmony iterations on both. NaN never agrees."""
    bound = 0.0 if device is None else TORCH_Z_REL
    return bool(z_rel <= bound) and iterations["harmonypy"] == iterations["phenovec"]


def synthetic(n: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    meta = pd.DataFrame({
        "Metadata_Plate": rng.integers(0, 20, n).astype(str),
        "Metadata_Row": rng.integers(0, 8, n).astype(str),
        "Metadata_Source": rng.integers(0, 3, n).astype(str),
    })
    centers = rng.normal(size=(12, d)) * 3
    x = centers[rng.integers(0, 12, n)] + rng.normal(size=(n, d))
    for col, scale in (("Metadata_Plate", 1.0), ("Metadata_Row", 0.5), ("Metadata_Source", 2.0)):
        codes = pd.factorize(meta[col])[0]
        x += (rng.normal(size=(codes.max() + 1, d)) * scale)[codes]
    return x, meta


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--pcs", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ncores", type=int, default=0)
    ap.add_argument("--device", default=None, help="phenovec's device: none (the exact CPU kernels, default), cuda, "
                                                   "cpu (PyTorch) or auto")
    ap.add_argument("--json", default=None, help="also write the JSON document here")
    args = ap.parse_args(argv)
    device = None if args.device is None or args.device.lower() == "none" else args.device
    if device == "auto":  # as run_harmony resolves it, so the right agreement criterion is applied
        import torch

        device = "cuda" if torch.cuda.is_available() else None

    import harmonypy

    from phenovec.batch.harmony import run_harmony

    logging.getLogger("harmonypy").setLevel(logging.WARNING)
    vars_use = ["Metadata_Plate", "Metadata_Row", "Metadata_Source"]
    x, meta = synthetic(2000, args.pcs, seed=1)
    run_harmony(x, meta, vars_use, ncores=args.ncores, device=device)  # warm-up (Numba compile / cache load)
    # and once with a few large batch combinations: the ridge sums' other path (stored per-combination sums)
    few = meta.apply(lambda col: pd.factorize(col)[0] % 2).astype(str)
    run_harmony(x, few, vars_use, ncores=args.ncores, device=device)
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "load_average": list(os.getloadavg())},
           "benchmark": "Harmony: phenovec vs harmonypy 2.1.0", "pcs": args.pcs, "device": device,
           "device_asked": args.device,
           "batch_variables": vars_use, "ncores": args.ncores,
           "agreement_criterion": ("Z_corr max rel diff == 0 and the same iterations" if device is None else
                                   f"Z_corr max rel diff <= {TORCH_Z_REL:g} and the same iterations"),
           "runs": []}
    for n in args.cells:
        x, meta = synthetic(n, args.pcs)
        times = {"harmonypy": [], "phenovec": []}
        cpu = {"harmonypy": [], "phenovec": []}
        ref = ours = None
        for rep in range(args.repeats):
            order = ("harmonypy", "phenovec") if rep % 2 == 0 else ("phenovec", "harmonypy")
            for who in order:
                t = time.perf_counter()
                c = time.process_time()
                if who == "harmonypy":
                    ref = harmonypy.run_harmony(x, meta, vars_use, verbose=False, ncores=args.ncores)
                else:
                    ours = run_harmony(x, meta, vars_use, ncores=args.ncores, device=device)
                times[who].append(time.perf_counter() - t)
                cpu[who].append(time.process_time() - c)
        zr, zo = ref.Z_corr, ours.Z_corr
        hp, pv = statistics.median(times["harmonypy"]), statistics.median(times["phenovec"])
        row = {
            "cells": n,
            "harmonypy_s": times["harmonypy"], "phenovec_s": times["phenovec"],
            "harmonypy_median_s": hp, "phenovec_median_s": pv, "speedup": hp / pv,
            "harmonypy_cpu_s": cpu["harmonypy"], "phenovec_cpu_s": cpu["phenovec"],
            "cpu_speedup": statistics.median(cpu["harmonypy"]) / statistics.median(cpu["phenovec"]),
            "z_corr_max_rel_diff": float(np.abs(zr - zo).max() / np.abs(zr).max()),
            "objective_harmony": {"harmonypy": list(map(float, ref.objective_harmony)),
                                  "phenovec": ours.objective_harmony},
            "iterations": {"harmonypy": len(ref.objective_harmony) - 1, "phenovec": len(ours.objective_harmony) - 1},
            "load_average_after": list(os.getloadavg()),
        }
        row["agreement"] = judge(row["z_corr_max_rel_diff"], row["iterations"], device)
        out["runs"].append(row)
        log(f"{n} cells x {args.pcs} PCs, 3 batch variables: harmonypy {hp:.2f} s, phenovec {pv:.2f} s, "
            f"{hp / pv:.1f}x (CPU seconds: harmonypy {statistics.median(cpu['harmonypy']):.2f}, phenovec "
            f"{statistics.median(cpu['phenovec']):.2f}, {row['cpu_speedup']:.1f}x); Z_corr max rel diff "
            f"{row['z_corr_max_rel_diff']:.2e}; iterations {row['iterations']['harmonypy']} / "
            f"{row['iterations']['phenovec']}; load average {os.getloadavg()[0]:.1f}"
            f"{'' if row['agreement'] else '; DISAGREES'}")
    bad = [r for r in out["runs"] if not r["agreement"]]
    out["agreement"] = not bad
    emit_document(out, None)
    if args.json:
        from phenovec.io.atomic import atomic_path

        with atomic_path(args.json) as tmp, open(tmp, "w") as f:
            json.dump(out, f, indent=1, default=float)
    if bad:
        print(f"WARNING: phenovec ({'exact path' if device is None else f'torch device {device}'}) and harmonypy "
              f"DISAGREE (wanted: {out['agreement_criterion']}): " + "; ".join(
                  f"{r['cells']} cells: Z_corr max rel diff {r['z_corr_max_rel_diff']:.3g}, iterations "
                  f"{r['iterations']['harmonypy']} / {r['iterations']['phenovec']}" for r in bad)
              + ". The timings do not compare the same result.", file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    sys.exit(0 if main()["agreement"] else 1)
