"""Symphony mapping: phenovec.batch.symphony vs symphonypy 0.2.4's ``map_embedding``, side by side in one process,
same reference, same query.

    python bench/symphony_bench.py --reference 20000 --query 10000 100000 --pcs 50 --plates 24 384 --repeats 3

The reference (synthetic PCs: 12 cell states, plate and source offsets) is corrected once by Harmony (phenovec's
``run_harmony``; symphonypy's ``harmony_integrate`` runs harmonypy 2.1.0 on it, whose numbers are the same). Each
query has plates the reference has not seen (``--plates`` of them, plus 3 sources as a second batch variable).
Each repeat maps the query with symphonypy then phenovec (order alternating between repeats); the timings are
wall-clock medians of the mapping alone. symphonypy's time includes its projection of the query onto the
reference's loadings (here an identity, a ``d x d`` product). Check: max |Z_corr difference| / max |Z_corr|.

``--confidence`` also times Symphony's per-cell mapping metric once per query size (phenovec.batch.mapping_confidence:
``ClusterSpread.fit`` on the reference, then ``distance``; symphonypy's ``per_cell_confidence``, its clusters'
covariances computed afresh each repeat, on the same uncorrected reference coordinates), the peer only up to
``--confidence-peer-max`` query cells: it holds K x n x d arrays (4 GB per copy at 100k x 50 PCs x 100 clusters).
Check: max |metric difference| / max metric.

Prints the JSON document on stdout (each size's row also goes to stderr as it finishes) and writes it to ``--json``.
Its ``agreement`` judges the checks: true when the reference's Harmony Z_corr, every mapped query's Z_corr and every
metric differ from symphonypy's by at most ``TOLERANCE`` (1e-9 relative, the tests' bound; measured 1e-15 to 4e-14).
Where they disagree the bench warns on stderr and exits with status 1 (the document is still printed and written).
The synthetic data keep every row's largest coordinate positive, the case where the two agree by design (symphonypy
flips a row whose coordinates are all negative: ``phenovec.batch.symphony``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import warnings

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import emit_document, log, machine_info  # noqa: E402

TOLERANCE = 1e-9  # max relative difference from symphonypy that counts as agreement (the tests' bound)


def rel_diff(ours, theirs) -> float:
    return float(np.abs(np.asarray(ours) - np.asarray(theirs)).max() / np.abs(theirs).max())


def agrees(diff) -> bool:
    """A check within ``TOLERANCE`` (NaN is not)."""
    return bool(diff <= TOLERANCE)


def synthetic(n: int, d: int, n_plates: int, prefix: str, seed: int):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(7).normal(size=(12, d)) * 0.8
    meta = pd.DataFrame({"Metadata_Plate": [f"{prefix}{p:04d}" for p in rng.integers(0, n_plates, n)],
                         "Metadata_Source": rng.integers(0, 3, n).astype(str)},
                        index=[f"{prefix}{i}" for i in range(n)])
    x = centers[rng.integers(0, 12, n)] + rng.normal(size=(n, d)) * 0.3
    for col, scale in (("Metadata_Plate", 0.3), ("Metadata_Source", 0.5)):
        codes = pd.factorize(meta[col])[0]
        x += (rng.normal(size=(codes.max() + 1, d)) * scale)[codes]
    x[:, 0] += 2.0  # most rows' largest coordinate positive: symphonypy flips the others (phenovec.batch.symphony)
    x = np.clip(x, -9.5, 9.5)  # symphonypy clips the query at +-10 before projecting it
    # with few PCs some rows are still all negative (5 PCs: 1 row in 100): every row's largest coordinate must be
    # positive for the two to agree, so such a row's first coordinate is set to 1 (none at 50 PCs, the recorded runs)
    x[x.max(axis=1) <= 0, 0] = 1.0
    return x, meta


def confidence(sp, ref, q, h, x_ref, x_q, r_q, args) -> dict:
    """Symphony's per-cell mapping metric: symphonypy's ``per_cell_confidence`` (``q``: its last mapped query)
    against ``ClusterSpread.fit`` + ``distance`` (fit and score timed apart), alternating, medians."""
    from phenovec.batch.mapping_confidence import ClusterSpread

    n = len(x_q)
    peer = n <= args.confidence_peer_max
    times = {"symphonypy": [], "phenovec_fit": [], "phenovec_distance": []}
    theirs = ours = None
    for rep in range(args.repeats):
        order = ("symphonypy", "phenovec") if rep % 2 == 0 else ("phenovec", "symphonypy")
        for who in order:
            if who == "symphonypy" and peer:
                for cached in ("inv_cluster_covs", "cluster_centers"):
                    ref.uns["harmony"].pop(cached, None)
                t = time.perf_counter()
                sp.tl.per_cell_confidence(q, ref, ref_basis_adjusted="X_pca")
                times[who].append(time.perf_counter() - t)
                theirs = q.obs["symphony_per_cell_dist"].to_numpy()
            elif who == "phenovec":
                t = time.perf_counter()
                spread = ClusterSpread.fit(x_ref, h.R)
                t1 = time.perf_counter()
                ours = spread.distance(x_q, r_q)
                times["phenovec_fit"].append(t1 - t)
                times["phenovec_distance"].append(time.perf_counter() - t1)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    total = med["phenovec_fit"] + med["phenovec_distance"]
    return {"confidence_query_cells": n, "symphonypy_s": med.get("symphonypy"), "phenovec_fit_s": med["phenovec_fit"],
            "phenovec_distance_s": med["phenovec_distance"], "phenovec_s": total,
            "speedup": med["symphonypy"] / total if peer else None,
            "metric_max_rel_diff": rel_diff(ours, theirs) if peer else None,
            "agreement": agrees(rel_diff(ours, theirs)) if peer else None, "all_s": times}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=int, default=20000)
    ap.add_argument("--query", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--pcs", type=int, default=50)
    ap.add_argument("--plates", type=int, nargs="+", default=[24, 384])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--confidence", action="store_true", help="also time the per-cell mapping metric")
    ap.add_argument("--confidence-peer-max", type=int, default=20000)
    ap.add_argument("--json", default=None, help="also write the JSON document here")
    args = ap.parse_args(argv)

    import anndata
    import symphonypy as sp

    from phenovec.batch.harmony import run_harmony

    logging.getLogger("harmonypy").setLevel(logging.WARNING)
    logging.getLogger("symphonypy").setLevel(logging.WARNING)
    key = ["Metadata_Plate", "Metadata_Source"]
    d = args.pcs
    x_ref, meta_ref = synthetic(args.reference, d, 24, "R", seed=0)
    ref = anndata.AnnData(X=x_ref.copy(), obs=meta_ref)
    ref.obsm["X_pca"] = x_ref.copy()
    ref.var["mean"] = 0.0
    ref.var["std"] = 1.0
    ref.varm["PCs"] = np.eye(d)
    sp.pp.harmony_integrate(ref, key=key, random_seed=0)
    h = run_harmony(x_ref, meta_ref, key, random_state=0)
    reference = h.reference()
    ref_diff = rel_diff(h.Z_corr, ref.obsm["X_pca_harmony"])
    results = {"benchmark": "Symphony mapping: phenovec vs symphonypy", "machine": machine_info(),
               "reference_cells": args.reference, "pcs": d, "nclust": reference.K,
               "reference_z_corr_identical": bool(np.array_equal(h.Z_corr, ref.obsm["X_pca_harmony"])),
               "reference_z_corr_max_rel_diff": ref_diff, "tolerance": TOLERANCE, "runs": []}
    for n in args.query:
        for n_plates in args.plates:
            x_q, meta_q = synthetic(n, d, n_plates, "Q", seed=1)
            times = {"symphonypy": [], "phenovec": []}
            check = None
            for rep in range(args.repeats):
                order = ("symphonypy", "phenovec") if rep % 2 == 0 else ("phenovec", "symphonypy")
                for who in order:
                    if who == "symphonypy":
                        q = anndata.AnnData(X=x_q.copy(), obs=meta_q)
                        q.uns["log1p"] = {}
                        t = time.perf_counter()
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            sp.tl.map_embedding(q, ref, key=key, use_genes_column=None)
                        times[who].append(time.perf_counter() - t)
                        theirs = q.obsm["X_pca_harmony"]
                    else:
                        t = time.perf_counter()
                        ours = reference.map(x_q, meta_q, key).Z_corr
                        times[who].append(time.perf_counter() - t)
                check = rel_diff(ours, theirs)
            med = {k: statistics.median(v) for k, v in times.items()}
            run = {"query_cells": n, "plates": n_plates, "symphonypy_s": med["symphonypy"],
                   "phenovec_s": med["phenovec"], "speedup": med["symphonypy"] / med["phenovec"],
                   "z_corr_max_rel_diff": check, "agreement": agrees(check), "all_s": times}
            results["runs"].append(run)
            log(json.dumps({k: v for k, v in run.items() if k != "all_s"}))
        if args.confidence:
            run = confidence(sp, ref, q, h, x_ref, x_q, reference.map(x_q, meta_q, key).R, args)
            results.setdefault("confidence", []).append(run)
            log(json.dumps({k: v for k, v in run.items() if k != "all_s"}))
    bad = [] if agrees(ref_diff) else [f"reference Z_corr {ref_diff:.3g}"]
    bad += [f"{r['query_cells']} query cells x {r['plates']} plates: Z_corr {r['z_corr_max_rel_diff']:.3g}"
            for r in results["runs"] if not r["agreement"]]
    bad += [f"{r['confidence_query_cells']} query cells: metric {r['metric_max_rel_diff']:.3g}"
            for r in results.get("confidence", []) if r["agreement"] is False]
    results["agreement"] = not bad
    emit_document(results, args.json)
    if bad:
        print(f"WARNING: phenovec and symphonypy DISAGREE beyond {TOLERANCE:g} relative (max |difference| / max "
              f"|symphonypy|): {'; '.join(bad)}. The timings do not compare the same result.", file=sys.stderr,
              flush=True)
    return results


if __name__ == "__main__":
    sys.exit(0 if main()["agreement"] else 1)
