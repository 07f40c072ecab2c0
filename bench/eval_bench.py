"""Benchmark phenovec.evaluate against copairs on synthetic Cell Painting-like profiles.

Cases (each timed in a fresh child process, so peak RSS is per case):

1. ``replicate``: replicate-retrieval AP (pos_sameby=[compound], neg_diffby=[compound], cosine)
   followed by the per-compound mean (mAP without p-values; the same pandas groupby for both
   implementations).
2. ``moa``: MOA-retrieval AP (pos_sameby=[moa], pos_diffby=[compound], neg_diffby=[moa]) followed by
   ``mean_average_precision(sameby=[moa], null_size, threshold=0.05, seed=0)`` with p-values.
   phenovec is timed with ``null_method="copairs"`` (identical p-values) and ``"fast"``; the AP step
   is run once per repeat and each mAP step timed separately, totals = AP + mAP.
   copairs' null cache is pointed at a fresh empty directory for every repeat.
3. ``bound``: ``Xn @ Xn.T`` in numpy (float32, unit rows; OpenBLAS sgemm on a separate contiguous
   transpose, so the full N x N is computed), in row blocks of <= 1 GB when N x N does not fit in ~4 GB: the lower bound of any similarity-based metric. With ``--breakdown``, also the time
   phenovec's Rust core needs for the similarity blocks alone (``iter_similarity_blocks``), so that
   AP time - similarity time = ranking + bookkeeping.
4. ``full``: at the largest N (or ``--full-n``): replicate AP + mAP with p-values and MOA AP + mAP with
   p-values (``null_method="fast"``), in one child; time, breakdown and peak RSS.

``--variants`` adds phenovec variants beside ``phenovec`` (each its own child, same data):

- ``phenovec_bf16`` (replicate case): ``average_precision(..., precision="bf16")`` (oneDNN bf16 GEMM; refused
  on a CPU without AVX512-BF16 / AMX);
- ``phenovec_many`` / ``phenovec_many_bf16`` (full case): the issue-28 question set, replicate vs DMSO (copairs'
  reference-index rules) + MOA consistency over the treated wells, ranked by ONE ``evaluate_many`` call (fp32 /
  bf16), then both mAPs with the fast null; ``phenovec_many_cuda`` / ``phenovec_many_cuda_bf16``: the same on
  ``device="cuda"`` (peak GPU memory recorded as ``peak_gpu_mb``); ``phenovec_many_torch``: fp32 through PyTorch's
  GEMM on the CPU (``engine="torch"``) instead of the Rust core; ``phenovec_many_rows``: Rust fp32 with row blocks
  instead of symmetric tiles (``symmetric=False``). (``phenovec`` in the full case keeps the historical replicate-vs-all
  + MOA as two ``average_precision`` calls.)

PyTorch is imported and the Numba kernels are compiled before the timed repeats.

Where both implementations ran, the copairs child keeps its last repeat's output and runs phenovec
once after its timed repeats (not timed, after its peak RSS is read) and reports the max abs difference of AP (and of mAP and
p-values with ``null_method="copairs"``).

Every repeat also records ``process_cpu_s``: the child's CPU seconds (all threads) during the repeat, a figure that
a loaded machine changes far less than wall time.

Peak RSS: ``peak_rss_eval_mb`` is the child's ``VmHWM`` during the timed calls only (the high-water
mark is reset through ``/proc/self/clear_refs`` before each repeat, after data generation), i.e.
resident input data + interpreter + evaluation; ``rss_after_datagen_mb`` is the RSS before the first
repeat.

Output: one JSON document on stdout (and ``--out``); progress on stderr.

Example (run A of RESULTS.md, ~19 min on 2 cores)::

    python bench/eval_bench.py --n 2000 5000 10000 50000 100000 --dim 1280 --repeats 3 --repeat-budget 60 \
        --peers copairs --peer-max-n 5000 --peer-moa-max-n 5000 --peer-repeats 1 --null-size 1000 \
        --case-max-n 50000 --breakdown --breakdown-max-n 10000 --out bench/out/results.json
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from measure import log, machine_info, peak_mb, reset_peak, rss_mb, run_json_child
from phenovec.benchmark.eval_data import COMPOUND, MOA, make_profiles  # the synthetic profiles (also used by phenovec bench)

THRESHOLD = 0.05
BOUND_WHOLE_BYTES = 4 * 2**30   # N x N float32 computed at once up to this size
BOUND_BLOCK_BYTES = 1 * 2**30   # otherwise blocks of at most this many bytes


# ----------------------------------------------------------------------------------------------
# Child: one (case, impl, N) measurement
# ----------------------------------------------------------------------------------------------

REPLICATE = dict(pos_sameby=[COMPOUND], pos_diffby=[], neg_sameby=[], neg_diffby=[COMPOUND])
REF = "Metadata_Reference_Index"  # copairs' reference index: DMSO wells numbered, treatments -1
ACTIVITY = dict(pos_sameby=[COMPOUND, REF], pos_diffby=[], neg_sameby=[], neg_diffby=[COMPOUND, REF])
MOA_RULES = dict(pos_sameby=[MOA], pos_diffby=[COMPOUND], neg_sameby=[], neg_diffby=[MOA])


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _repeat(spec, body):
    """Run body() up to spec['repeats'] times (stop early once spec['repeat_budget'] s are spent).

    body returns a dict of named part times; the peak RSS over the repeats is recorded.
    """
    parts, peaks, spent = [], [], 0.0
    for r in range(spec["repeats"]):
        can_reset = reset_peak()
        c0 = time.process_time()
        p = body()
        p["process_cpu_s"] = time.process_time() - c0  # all threads' CPU: comparable across loads, unlike wall time
        peaks.append(peak_mb() if can_reset else float("nan"))
        parts.append(p)
        spent += sum(v for k, v in p.items() if k.startswith("total"))
        log(f"  {spec['case']} {spec['impl']} N={spec['n']} repeat {r + 1}/{spec['repeats']}: "
            + ", ".join(f"{k}={v:.2f}s" for k, v in p.items()))
        if spent > spec["repeat_budget"] and r + 1 < spec["repeats"]:
            log(f"  (stopping after {r + 1} repeats: {spent:.0f} s > repeat budget {spec['repeat_budget']} s)")
            break
    return parts, max(peaks)


def child(spec: dict) -> dict:
    import pandas as pd

    res = dict(spec)
    t0 = time.perf_counter()
    meta, x, layout = make_profiles(spec["n"], spec["dim"], spec["seed"])
    res["datagen_s"] = time.perf_counter() - t0
    res["layout"] = layout
    res["data_mb"] = x.nbytes / 2**20
    res["rss_after_datagen_mb"] = rss_mb()
    case, impl = spec["case"], spec["impl"]
    null_size = spec["null_size"]
    check = None
    last = {}  # the last repeat's outputs (copairs), for the agreement check

    if impl == "phenovec" or impl == "phenovec_similarity":
        import phenovec.evaluate as pe
    if impl == "copairs":
        import copairs.map as cm

    if impl.startswith("phenovec_") and impl != "phenovec_similarity":
        import phenovec.evaluate as pe
        from phenovec.evaluate.evaluate_many import evaluate_many

        import torch  # noqa: F401  (import cost outside the timings)
        precision = "bf16" if impl.endswith("bf16") else "fp32"
        device = "cuda" if "_cuda" in impl else "cpu"
        engine = "torch" if impl.endswith("_torch") else "auto"
        symmetric = not impl.endswith("_rows")
        small = slice(0, 600)
        evaluate_many(meta.iloc[small], x[small], {"r": REPLICATE}, precision=precision, device=device,
                      symmetric=symmetric)  # warm up (compiles the kernels this variant uses)

    if case == "replicate":
        if impl == "phenovec_bf16":
            def body():
                ta, ap = _timed(lambda: pe.average_precision(meta, x, distance="cosine", precision="bf16", **REPLICATE))
                tm, _ = _timed(lambda: ap.groupby(COMPOUND, observed=True)["average_precision"].mean())
                return {"total": ta + tm, "ap": ta, "map_groupby": tm}
        elif impl == "phenovec":
            def body():
                ta, ap = _timed(lambda: pe.average_precision(meta, x, distance="cosine", **REPLICATE))
                tm, _ = _timed(lambda: ap.groupby(COMPOUND, observed=True)["average_precision"].mean())
                return {"total": ta + tm, "ap": ta, "map_groupby": tm}
        else:
            def body():
                ta, ap = _timed(lambda: cm.average_precision(meta, x, distance="cosine", progress_bar=False, **REPLICATE))
                tm, _ = _timed(lambda: ap.groupby(COMPOUND, observed=True)["average_precision"].mean())
                last["ap"] = ap
                return {"total": ta + tm, "ap": ta, "map_groupby": tm}
        parts, res["peak_rss_eval_mb"] = _repeat(spec, body)
        if impl == "copairs" and spec.get("check"):
            ref = last.pop("ap")
            ours = pe_ap(meta, x, REPLICATE)
            check = compare_ap(ref, ours)

    elif case == "moa":
        if impl == "phenovec":
            def body():
                ta, ap = _timed(lambda: pe.average_precision(meta, x, distance="cosine", **MOA_RULES))
                tc, _ = _timed(lambda: pe.mean_average_precision(ap, [MOA], null_size, THRESHOLD, 0, progress_bar=False,
                                                                  null_method="copairs"))
                tf, _ = _timed(lambda: pe.mean_average_precision(ap, [MOA], null_size, THRESHOLD, 0, progress_bar=False,
                                                                  null_method="fast"))
                return {"total_copairs_null": ta + tc, "total_fast_null": ta + tf, "ap": ta,
                        "map_copairs_null": tc, "map_fast_null": tf}
        else:
            def body():
                cache = tempfile.mkdtemp(prefix="copairs_cache_")
                try:
                    ta, ap = _timed(lambda: cm.average_precision(meta, x, distance="cosine", progress_bar=False, **MOA_RULES))
                    tm, mp = _timed(lambda: cm.mean_average_precision(ap, [MOA], null_size, THRESHOLD, 0,
                                                                       progress_bar=False, cache_dir=cache))
                finally:
                    shutil.rmtree(cache, ignore_errors=True)
                last["ap"], last["map"] = ap, mp
                return {"total": ta + tm, "ap": ta, "map": tm}
        parts, res["peak_rss_eval_mb"] = _repeat(spec, body)
        if impl == "copairs" and spec.get("check"):
            ref, ref_map = last.pop("ap"), last.pop("map")
            ours = pe_ap(meta, x, MOA_RULES)
            check = compare_ap(ref, ours)
            import phenovec.evaluate as pe2
            our_map = pe2.mean_average_precision(ours, [MOA], null_size, THRESHOLD, 0, progress_bar=False,
                                                 null_method="copairs")
            a = ref_map.sort_values(MOA).reset_index(drop=True)
            b = our_map.sort_values(MOA).reset_index(drop=True)
            check["map_groups_equal"] = bool((a[MOA].to_numpy() == b[MOA].to_numpy()).all())
            check["map_max_abs_diff"] = float(np.max(np.abs(a["mean_average_precision"].to_numpy()
                                                             - b["mean_average_precision"].to_numpy())))
            check["p_value_max_abs_diff"] = float(np.max(np.abs(a["p_value"].to_numpy() - b["p_value"].to_numpy())))
            check["below_corrected_p_mismatches"] = int((a["below_corrected_p"].to_numpy()
                                                         != b["below_corrected_p"].to_numpy()).sum())

    elif case == "bound":
        if impl == "numpy_gemm":
            xn = x / np.linalg.norm(x, axis=1, keepdims=True)
            # a separate contiguous transpose: numpy calls sgemm (full N x N flops, as phenovec
            # computes), not ssyrk, which it picks for `xn @ xn.T` on one buffer
            xt = np.ascontiguousarray(xn.T)
            n = len(xn)
            if n * n * 4 <= BOUND_WHOLE_BYTES:
                step = n
            else:
                step = max(1, BOUND_BLOCK_BYTES // (n * 4))
            res["block_rows"] = step

            def body():
                t = time.perf_counter()
                for s in range(0, n, step):
                    blk = xn[s : s + step] @ xt
                    del blk
                return {"total": time.perf_counter() - t}
        else:  # phenovec_similarity: the Rust core's similarity blocks, no ranking
            def body():
                t = time.perf_counter()
                for _, blk in pe.iter_similarity_blocks(x, "cosine"):
                    del blk
                return {"total": time.perf_counter() - t}
        parts, res["peak_rss_eval_mb"] = _repeat(spec, body)

    elif case == "full" and impl.startswith("phenovec_many"):
        dmso = (meta[COMPOUND] == "DMSO").to_numpy()
        meta[REF] = np.where(dmso, np.arange(len(meta)), -1)
        rule_sets = {"replicate_vs_dmso": ACTIVITY, "moa": {**MOA_RULES, "rows": ~dmso}}

        def body():
            stats = {}
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            ta, out = _timed(lambda: evaluate_many(meta, x, rule_sets, distance="cosine", precision=precision,
                                                   device=device, engine=engine, stats=stats, symmetric=symmetric))
            if device == "cuda":
                res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
                res["gpu"] = torch.cuda.get_device_name()
            tm, _ = _timed(lambda: pe.mean_average_precision(out["replicate_vs_dmso"], [COMPOUND], null_size, THRESHOLD, 0,
                                                              progress_bar=False, null_method="fast"))
            tn, _ = _timed(lambda: pe.mean_average_precision(out["moa"], [MOA], null_size, THRESHOLD, 0,
                                                              progress_bar=False, null_method="fast"))
            res["blocks"] = stats
            return {"total": ta + tm + tn, "evaluate_many_ap": ta, "replicate_map_fast_null": tm,
                    "moa_map_fast_null": tn}
        parts, res["peak_rss_eval_mb"] = _repeat(spec, body)

    elif case == "full":
        def body():
            ta, ap = _timed(lambda: pe.average_precision(meta, x, distance="cosine", **REPLICATE))
            tm, _ = _timed(lambda: pe.mean_average_precision(ap, [COMPOUND], null_size, THRESHOLD, 0,
                                                              progress_bar=False, null_method="fast"))
            tb, ap2 = _timed(lambda: pe.average_precision(meta, x, distance="cosine", **MOA_RULES))
            tn, _ = _timed(lambda: pe.mean_average_precision(ap2, [MOA], null_size, THRESHOLD, 0,
                                                              progress_bar=False, null_method="fast"))
            return {"total": ta + tm + tb + tn, "replicate_ap": ta, "replicate_map_fast_null": tm,
                    "moa_ap": tb, "moa_map_fast_null": tn}
        parts, res["peak_rss_eval_mb"] = _repeat(spec, body)
    else:
        raise ValueError(f"unknown case {case!r}")

    res["parts"] = parts
    res["vm_hwm_note"] = "peak_rss_eval_mb: max over repeats of VmHWM during the timed calls (input data included)"
    if check is not None:
        res["agreement"] = check
    return res


def pe_ap(meta, x, rules):
    import phenovec.evaluate as pe
    return pe.average_precision(meta, x, distance="cosine", **rules)


def compare_ap(ref, ours) -> dict:
    a = ref["average_precision"].to_numpy(dtype=float)
    b = ours["average_precision"].to_numpy(dtype=float)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    ok = ~nan_a & ~nan_b
    return {
        "rows": int(len(a)),
        "nan_positions_equal": bool((nan_a == nan_b).all()),
        "ap_max_abs_diff": float(np.max(np.abs(a[ok] - b[ok]))) if ok.any() else None,
        "ap_rows_differing_gt_1e-6": int((np.abs(a[ok] - b[ok]) > 1e-6).sum()),
        "n_pos_pairs_equal": bool((ref["n_pos_pairs"].to_numpy() == ours["n_pos_pairs"].to_numpy()).all()),
        "n_total_pairs_equal": bool((ref["n_total_pairs"].to_numpy() == ours["n_total_pairs"].to_numpy()).all()),
    }


# ----------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------

def run_child(spec: dict, timeout: float) -> dict:
    log(f"case={spec['case']} impl={spec['impl']} N={spec['n']} repeats={spec['repeats']}")
    res = run_json_child(__file__, spec, timeout)
    if "error" in res:
        return res
    for key in ("total", "total_copairs_null", "total_fast_null"):
        vals = [q[key] for q in res["parts"] if key in q]
        if vals:
            res.setdefault("times_s", {})[key] = vals
            res.setdefault("median_s", {})[key] = statistics.median(vals)
    for key in res["parts"][0]:
        res.setdefault("median_parts_s", {})[key] = statistics.median(q[key] for q in res["parts"])
    return res


def versions() -> dict:
    from importlib import metadata

    out = {}
    for mod in ("numpy", "pandas", "scipy", "copairs", "phenovec"):
        try:
            out[mod] = metadata.version(mod)
        except metadata.PackageNotFoundError:
            try:
                out[mod] = getattr(__import__(mod), "__version__", "unknown")
            except ImportError:
                out[mod] = None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 10000, 50000, 100000], help="numbers of profiles")
    ap.add_argument("--dim", type=int, default=1280, help="features per profile (float32)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per phenovec / numpy case")
    ap.add_argument("--repeat-budget", type=float, default=300.0,
                    help="stop repeating a case once its repeats took this many seconds (>= 1 repeat always)")
    ap.add_argument("--peers", nargs="*", default=["copairs"], choices=["copairs"], help="peer implementations")
    ap.add_argument("--peer-max-n", type=int, default=10000, help="largest N for copairs replicate AP (above: skipped)")
    ap.add_argument("--peer-moa-max-n", type=int, default=None,
                    help="largest N for copairs MOA AP + p-values (default: --peer-max-n)")
    ap.add_argument("--peer-repeats", type=int, default=None, help="copairs repeats for N <= --peer-repeat-max-n (default --repeats)")
    ap.add_argument("--peer-repeat-max-n", type=int, default=2000, help="copairs runs once above this N")
    ap.add_argument("--null-size", type=int, default=1000)
    ap.add_argument("--cases", nargs="+", default=["replicate", "moa", "bound", "full"],
                    choices=["replicate", "moa", "bound", "full"])
    ap.add_argument("--case-max-n", type=int, default=None,
                    help="run cases 1-2 (replicate, moa) only up to this N; larger N get only bound + full")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time phenovec's similarity blocks alone (case 3) up to --breakdown-max-n")
    ap.add_argument("--breakdown-max-n", type=int, default=10**9)
    ap.add_argument("--full-n", type=int, default=None, help="N of the full evaluation (default: largest --n)")
    ap.add_argument("--full-repeats", type=int, default=1)
    ap.add_argument("--variants", nargs="*", default=[],
                    choices=["phenovec_bf16", "phenovec_many", "phenovec_many_rows", "phenovec_many_bf16", "phenovec_many_torch",
                             "phenovec_many_cuda", "phenovec_many_cuda_bf16"],
                    help="extra phenovec variants (replicate case: phenovec_bf16; full case: phenovec_many[_bf16])")
    ap.add_argument("--full-impls", nargs="*", default=["phenovec"], choices=["phenovec", "none"],
                    help="'none' skips the historical two-call full evaluation (e.g. at 100k, 425 s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child-timeout", type=float, default=1800.0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child is not None:
        res = child(json.loads(args.child))
        print(json.dumps(res))
        return 0

    moa_max = args.peer_moa_max_n if args.peer_moa_max_n is not None else args.peer_max_n
    peer_rep = args.peer_repeats if args.peer_repeats is not None else args.repeats
    base = dict(dim=args.dim, seed=args.seed, null_size=args.null_size, repeat_budget=args.repeat_budget)
    doc = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "command": "python bench/eval_bench.py "
           + " ".join(sys.argv[1:]), "machine": machine_info(), "versions": versions(),
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"},
           "notes": ["timings are wall-clock seconds on a machine shared with other users; quote medians",
                     "replicate case: mAP = pandas groupby mean of AP, identical code for both implementations",
                     "moa case: phenovec totals = AP + mAP (one AP per repeat, each null method timed separately)"],
           "results": [], "skipped": []}
    t_start = time.perf_counter()

    def add(spec):
        r = run_child(dict(base, **spec), args.child_timeout)
        doc["results"].append(r)
        return r

    for n in args.n:
        small = args.case_max_n is None or n <= args.case_max_n
        bound = None
        if "bound" in args.cases:
            bound = add(dict(case="bound", impl="numpy_gemm", n=n, repeats=args.repeats))
            if args.breakdown and n <= args.breakdown_max_n:
                add(dict(case="bound", impl="phenovec_similarity", n=n, repeats=args.repeats))
        for case in ("replicate", "moa"):
            if case not in args.cases:
                continue
            if not small:
                doc["skipped"].append({"case": case, "n": n, "impl": "phenovec",
                                       "reason": f"N > --case-max-n {args.case_max_n}: see the full case"})
                continue
            pv = add(dict(case=case, impl="phenovec", n=n, repeats=args.repeats))
            if case == "replicate" and "phenovec_bf16" in args.variants:
                add(dict(case=case, impl="phenovec_bf16", n=n, repeats=args.repeats))
            limit = args.peer_max_n if case == "replicate" else moa_max
            for peer in args.peers:
                if n > limit:
                    doc["skipped"].append({"case": case, "n": n, "impl": peer,
                                           "reason": f"skipped: too slow (N > {limit})"})
                    continue
                reps = peer_rep if n <= args.peer_repeat_max_n else 1
                add(dict(case=case, impl=peer, n=n, repeats=reps, check=True))
    if "full" in args.cases:
        full_n = args.full_n or max(args.n)
        for impl in [i for i in args.full_impls if i != "none"] + [v for v in args.variants if v.startswith("phenovec_many")]:
            add(dict(case="full", impl=impl, n=full_n, repeats=args.full_repeats))

    doc["summary"] = summarize(doc["results"])
    doc["machine"]["loadavg_end"] = os.getloadavg()
    doc["wall_s"] = time.perf_counter() - t_start
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    log(f"done in {doc['wall_s']:.0f} s")
    return 0


def summarize(results) -> list:
    """One row per (case, N): medians, copairs/phenovec ratio, phenovec/bound, peak RSS."""
    by = {}
    for r in results:
        if "error" in r:
            continue
        by.setdefault((r["case"], r["n"]), {})[r["impl"]] = r
    bounds = {n: d["numpy_gemm"]["median_s"]["total"] for (c, n), d in by.items() if c == "bound" and "numpy_gemm" in d}
    rows = []
    for (case, n), d in sorted(by.items(), key=lambda kv: (["bound", "replicate", "moa", "full"].index(kv[0][0]), kv[0][1])):
        cp = d.get("copairs")
        if case == "bound":
            row = {"case": case, "n": n, "numpy_gemm_s": bounds.get(n),
                   "peak_rss_eval_mb": d["numpy_gemm"]["peak_rss_eval_mb"]}
            if "phenovec_similarity" in d:
                s = d["phenovec_similarity"]["median_s"]["total"]
                row["phenovec_similarity_s"] = s
                row["phenovec_similarity_over_bound"] = s / bounds[n] if bounds.get(n) else None
            rows.append(row)
            continue
        impls = [k for k in d if k.startswith("phenovec") and k != "phenovec_similarity"]
        for impl in sorted(impls, key=lambda k: (k != "phenovec", k)):
            rows.extend(summary_rows(case, n, impl, d[impl], cp, bounds))
    return rows


def summary_rows(case, n, impl, pv, cp, bounds) -> list:
    rows = []
    keys = ["total"] if case in ("replicate", "full") else ["total_copairs_null", "total_fast_null"]
    for key in keys:
        row = {"case": case if key == "total" else f"{case} ({key[6:].replace('_', ' ')})", "n": n, "impl": impl,
               "phenovec_s": pv["median_s"][key], "phenovec_repeats": len(pv["times_s"][key]),
               "phenovec_peak_rss_eval_mb": pv["peak_rss_eval_mb"], "phenovec_parts_s": pv["median_parts_s"]}
        if cp is not None:
            row["copairs_s"] = cp["median_s"]["total"]
            row["copairs_repeats"] = len(cp["times_s"]["total"])
            row["copairs_peak_rss_eval_mb"] = cp["peak_rss_eval_mb"]
            row["copairs_over_phenovec"] = cp["median_s"]["total"] / pv["median_s"][key]
            row["agreement"] = cp.get("agreement")
        if n in bounds:
            ap_s = pv["median_parts_s"].get("ap")
            row["phenovec_over_bound"] = pv["median_s"][key] / bounds[n]
            if ap_s is not None:
                row["phenovec_ap_over_bound"] = ap_s / bounds[n]
            if case == "full" and impl == "phenovec":
                row["phenovec_over_bound"] = pv["median_s"][key] / (2 * bounds[n])
                row["bound_note"] = "full = two similarity passes: ratio against 2 x GEMM"
        rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
