"""Benchmark evaluate_many (one similarity pass for several rule sets; control-only columns) on eval_bench's profiles.

Same synthetic layout as ``bench/eval_bench.py`` (``make_profiles``: ~10% DMSO wells, 4 replicates per
compound on different plates, MOAs of 2-8 compounds, float32, rows shuffled), plus copairs' reference index
(DMSO wells numbered, treatments -1). All timings in this one process, each case ``--repeats`` times
(median reported), cosine, ``ties="copairs"``:

- ``activity``: replicate vs DMSO (copairs' phenotypic activity rules) by
  ``single_full`` (``pe.average_precision``, Rust, N x N x D), ``many_all`` (``evaluate_many`` with
  ``columns="all"``), ``many_control_only`` (``columns="auto"``: each query block against its replicates and
  the DMSO wells only) and ``copairs`` (0.5.5, ``--copairs-repeats`` times, skipped above ``--copairs-max-n``);
- ``suite``: replicate vs DMSO + replicate vs all + MOA consistency as three single calls vs one
  ``evaluate_many`` call.

``--precisions fp32 bf16`` also times ``many_control_only`` with a bf16 GEMM (``many_control_only_bf16``, its
max |dAP| against fp32 reported); ``--no-single`` skips the N x N single call and ``columns="all"`` (for large N,
where only the control-only path is affordable).

Every phenovec output is compared with the single-rule call (``max_abs_diff_vs_single`` must be 0) and
copairs' AP with the single-rule call. One JSON document on stdout (and ``--out``); progress on stderr.

Example::

    python bench/eval_many_bench.py --n 10000 --dim 1280 --repeats 3 --copairs-repeats 1 --out bench/out/eval_many.json
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from eval_bench import COMPOUND, MOA, MOA_RULES, REPLICATE, make_profiles, versions
from measure import emit_document, log, machine_info

REF = "Metadata_Reference_Index"
ACTIVITY = dict(pos_sameby=[COMPOUND, REF], pos_diffby=[], neg_sameby=[], neg_diffby=[COMPOUND, REF])


def timed(fn, repeats: int, label: str):
    times, out = [], None
    for r in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        log(f"  {label} repeat {r + 1}/{repeats}: {times[-1]:.2f} s")
    return {"times_s": times, "median_s": statistics.median(times)}, out


def max_diff(a, b) -> float:
    x, y = a["average_precision"].to_numpy(float), b["average_precision"].to_numpy(float)
    if not np.array_equal(np.isnan(x), np.isnan(y)):
        return float("inf")
    ok = ~np.isnan(x)
    return float(np.max(np.abs(x[ok] - y[ok]))) if ok.any() else 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--copairs-repeats", type=int, default=1)
    ap.add_argument("--copairs-max-n", type=int, default=20000)
    ap.add_argument("--cases", nargs="+", default=["activity", "suite"], choices=["activity", "suite"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    ap.add_argument("--no-single", action="store_true", help="activity: time only the control-only path")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import phenovec.evaluate as pe
    from phenovec.evaluate.evaluate_many import evaluate_many

    meta, x, layout = make_profiles(args.n, args.dim, args.seed)
    dmso = (meta[COMPOUND] == "DMSO").to_numpy()
    meta[REF] = np.where(dmso, np.arange(len(meta)), -1)
    doc = {"bench": "eval_many", "machine": machine_info(), "versions": versions(), "layout": layout,
           "args": vars(args), "results": {}}
    # warm the Numba kernels (compiled once per machine, cached) and PyTorch outside the timings
    # (90 compounds' replicates + 40 DMSO wells: rows that pair at any N)
    warm = np.concatenate([np.argsort(meta[COMPOUND].to_numpy(), kind="stable")[:360], np.flatnonzero(dmso)[:40]])
    evaluate_many(meta.iloc[warm], x[warm], {"a": ACTIVITY})
    if "bf16" in args.precisions:
        evaluate_many(meta.iloc[warm], x[warm], {"a": ACTIVITY}, precision="bf16")

    if "activity" in args.cases:
        log(f"activity N={args.n} D={args.dim}")
        res = {}
        stats_all, stats_red = {}, {}
        if not args.no_single:
            res["single_full"], single = timed(lambda: pe.average_precision(meta, x, **ACTIVITY), args.repeats, "single_full")
            res["many_all"], full = timed(lambda: evaluate_many(meta, x, {"a": ACTIVITY}, columns="all", stats=stats_all),
                                          args.repeats, "many_all")
            res["many_all"].update(max_abs_diff_vs_single=max_diff(full["a"], single), **stats_all)
        res["many_control_only"], red = timed(
            lambda: evaluate_many(meta, x, {"a": ACTIVITY}, columns="auto", stats=stats_red), args.repeats, "many_control_only")
        res["many_control_only"].update(**stats_red)
        if "bf16" in args.precisions:
            stats_bf = {}
            res["many_control_only_bf16"], red_bf = timed(
                lambda: evaluate_many(meta, x, {"a": ACTIVITY}, columns="auto", precision="bf16", stats=stats_bf),
                args.repeats, "many_control_only_bf16")
            res["many_control_only_bf16"].update(max_abs_diff_vs_fp32=max_diff(red_bf["a"], red["a"]), **stats_bf)
        if not args.no_single:
            res["many_control_only"]["max_abs_diff_vs_single"] = max_diff(red["a"], single)
            if args.n <= args.copairs_max_n and args.copairs_repeats > 0:
                from copairs.map import average_precision as cp_ap

                res["copairs"], theirs = timed(lambda: cp_ap(meta, x, progress_bar=False, **ACTIVITY), args.copairs_repeats, "copairs")
                res["copairs"]["max_abs_diff_vs_single"] = max_diff(theirs, single)
                for k in ("single_full", "many_all", "many_control_only"):
                    res[k]["speedup_vs_copairs"] = res["copairs"]["median_s"] / res[k]["median_s"]
            res["many_control_only"]["speedup_vs_single_full"] = res["single_full"]["median_s"] / res["many_control_only"]["median_s"]
        doc["results"]["activity"] = res

    if "suite" in args.cases:
        log(f"suite N={args.n} D={args.dim}")
        keep = ~dmso
        rule_sets = {"replicate_vs_dmso": ACTIVITY, "replicate_vs_all": REPLICATE, "moa": {**MOA_RULES, "rows": keep}}
        mk, xk = meta[keep].reset_index(drop=True), x[keep]

        def singles():
            return {"replicate_vs_dmso": pe.average_precision(meta, x, **ACTIVITY),
                    "replicate_vs_all": pe.average_precision(meta, x, **REPLICATE),
                    "moa": pe.average_precision(mk, xk, **MOA_RULES)}

        res = {}
        res["three_single_calls"], one = timed(singles, args.repeats, "three_single_calls")
        stats = {}
        res["evaluate_many"], many = timed(lambda: evaluate_many(meta, x, rule_sets, stats=stats), args.repeats, "evaluate_many")
        res["evaluate_many"].update(max_abs_diff_vs_single={k: max_diff(many[k], one[k]) for k in one}, **stats)
        res["evaluate_many"]["speedup_vs_single_calls"] = res["three_single_calls"]["median_s"] / res["evaluate_many"]["median_s"]
        doc["results"]["suite"] = res

    emit_document(doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
