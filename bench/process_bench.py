"""Benchmark phenovec.process against pycytominer 1.7.1 on the same synthetic inputs, side by side.

Cases (each implementation timed in a fresh child process, so peak RSS is per case and per implementation):

1. ``spherize``: well profiles N x D (float64), ~10% DMSO; ZCA-cor fitted on the DMSO rows, applied to all
   rows. pycytominer: ``normalize(method="spherize", spherize_method="ZCA-cor", samples=DMSO)``;
   phenovec: ``phenovec.process.spherize(method="ZCA-cor", samples=DMSO)``.
2. ``mad_robustize``: single-cell-like rows N x D on P plates; per-plate MAD robustize fitted on each
   plate's DMSO rows. pycytominer: a loop of ``normalize(method="mad_robustize")`` over plates (it has no
   grouping, #154) + ``pd.concat``; phenovec: one ``normalize(..., by="Metadata_Plate")`` call.
3. ``correlation``: ``feature_select(operation="correlation_threshold")`` on N x D (D = 1,280 by default),
   with CellProfiler-like redundancy (families of 8 noisy copies of a latent feature, ``make_correlated_table``).
4. ``stream``: ``--stream-n`` single-cell rows x D float32 in a Zarr embedding store (written by the child
   before timing; not timed): streamed aggregate (mean per plate x well) -> per-plate mad_robustize on DMSO
   -> ZCA-cor spherize on DMSO, with the peak RSS of the processing. pycytominer is run on the same pipeline
   at ``--stream-peer-n`` rows read into memory (it has no streaming path), for the ratio at that size.

Every peer/ours pair reports the max abs difference of the outputs. Output: JSON on stdout (and ``--out``),
progress on stderr. Example::

    python bench/process_bench.py --cases spherize mad_robustize correlation --repeats 3 --out bench/out/process.json
    python bench/process_bench.py --cases stream --stream-n 10000000 --repeats 1 --out bench/out/stream.json
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

import numpy as np

from measure import emit_document, log, machine_info, peak_mb, reset_peak, rss_mb, run_json_child

PLATE, WELL, TREAT = "Metadata_Plate", "Metadata_Well", "Metadata_Treatment"
DMSO = f"{TREAT} == 'DMSO'"


def make_table(n: int, d: int, plates: int, seed: int = 0, dtype=np.float64):
    """Rows on ``plates`` plates, 10% DMSO, features = noise + plate offset/scale + treatment effect (heavy-ish
    tails through a few lognormal columns so medians and MADs differ from means and SDs)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    plate = rng.integers(0, plates, n)
    treat = np.where(rng.random(n) < 0.1, "DMSO", "cpd_" + (rng.integers(0, max(n // 40, 2), n)).astype(str))
    x = rng.standard_normal((n, d)).astype(dtype)
    x += rng.normal(0, 0.5, (plates, d)).astype(dtype)[plate]
    x *= rng.uniform(0.5, 2.0, (plates, d)).astype(dtype)[plate]
    x[:, : d // 10] = np.exp(x[:, : d // 10] / 2)
    meta = pd.DataFrame({PLATE: "plate_" + plate.astype(str), WELL: "w" + (np.arange(n) % 384).astype(str),
                         TREAT: treat})
    feats = [f"Cells_f{i}" for i in range(d)]
    return pd.concat([meta, pd.DataFrame(x, columns=feats)], axis=1), feats


def make_correlated_table(n: int, d: int, plates: int, seed: int = 0, family: int = 8):
    """CellProfiler-like redundancy: features come in families of ``family`` noisy copies of one latent
    measurement (r ~ 0.9-0.99 within a family, as Intensity/Texture/AreaShape variants are), so the
    correlation filter has thousands of pairs above 0.9 to judge -- the regime of pycytominer #633."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    base, _ = make_table(n, d, plates, seed)
    lat = rng.standard_normal((n, -(-d // family)))
    noise = rng.uniform(0.05, 0.5, d)
    x = lat[:, np.arange(d) // family] + noise * rng.standard_normal((n, d))
    feats = [f"Cells_f{i}" for i in range(d)]
    return pd.concat([base[[PLATE, WELL, TREAT]], pd.DataFrame(x, columns=feats)], axis=1), feats


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _max_diff(a, b, feats_a, feats_b=None) -> float:
    xa = a[feats_a].to_numpy(dtype=np.float64)
    xb = b[feats_b or feats_a].to_numpy(dtype=np.float64)
    return float(np.nanmax(np.abs(xa - xb))) if xa.size else 0.0


def run_case(spec: dict) -> dict:
    import pandas as pd

    case, impl, n, d = spec["case"], spec["impl"], spec["n"], spec["d"]
    maker = make_correlated_table if case == "correlation" else make_table
    df, feats = maker(n, d, spec["plates"], seed=spec["seed"])
    meta = [PLATE, WELL, TREAT]
    if case == "spherize":
        if impl == "pycytominer":
            from pycytominer import normalize as f

            body = lambda: f(df, features=feats, meta_features=meta, samples=DMSO, method="spherize",
                             spherize_method="ZCA-cor", spherize_epsilon=1e-6)
        else:
            from phenovec.process.spherize import spherize as f

            body = lambda: f(df, features=feats, meta_features=meta, samples=DMSO, method="ZCA-cor", epsilon=1e-6)
    elif case == "mad_robustize":
        if impl == "pycytominer":
            from pycytominer import normalize as f

            def body():
                parts = [f(g, features=feats, meta_features=meta, samples=DMSO, method="mad_robustize")
                         for _, g in df.groupby(PLATE, sort=False)]
                return pd.concat(parts).loc[df.index]
        else:
            from phenovec.process.normalize import normalize as f

            body = lambda: f(df, features=feats, meta_features=meta, samples=DMSO, method="mad_robustize",
                             by=PLATE)
    elif case == "correlation":
        if impl == "pycytominer":
            from pycytominer import feature_select as f
        else:
            from phenovec.process.feature_select import feature_select as f
        body = lambda: f(df, features=feats, operation="correlation_threshold", corr_threshold=spec["corr"])
    else:
        raise ValueError(case)
    times, peaks, out = [], [], None
    for r in range(spec["repeats"]):
        ok = reset_peak()
        t, out = _timed(body)
        times.append(t)
        peaks.append(peak_mb() if ok else float("nan"))
        log(f"  {case} {impl} n={n} d={d} repeat {r + 1}: {t:.3f} s")
    res = dict(spec, times_s=times, median_s=statistics.median(times), peak_rss_mb=max(peaks))
    if case == "correlation":
        res["kept_features"] = [c for c in out.columns if c in set(feats)]
    else:
        res["output_path"] = os.path.join(spec["tmp"], f"{case}-{impl}.parquet")
        out.reset_index(drop=True).to_parquet(res["output_path"])
    return res


def run_stream(spec: dict) -> dict:
    """The streamed pipeline (phenovec) or its in-memory pycytominer equivalent, on a Zarr store."""
    import pandas as pd

    n, d, impl = spec["n"], spec["d"], spec["impl"]
    store = os.path.join(spec["tmp"], f"cells-{n}-{d}.zarr")
    feats = [f"emb_{i}" for i in range(d)]
    meta_cols = [PLATE, WELL, TREAT]
    if not os.path.exists(store):
        write_cell_store(store, n, d, spec["plates"], spec["seed"])
    res = dict(spec, rss_before_mb=rss_mb())
    ok = reset_peak()
    t0 = time.perf_counter()
    if impl == "phenovec":
        from phenovec.process.aggregate import aggregate_stream
        from phenovec.process.normalize import normalize
        from phenovec.process.spherize import spherize

        t, wells = _timed(lambda: aggregate_stream(store, strata=[PLATE, WELL], features=feats, operation="mean",
                                                   batch_rows=spec["batch_rows"]))
        res["aggregate_s"] = t
        wells = _annotate(wells)
        t, normed = _timed(lambda: normalize(wells, features=feats, meta_features=meta_cols, samples=DMSO,
                                             method="mad_robustize", by=PLATE))
        res["normalize_s"] = t
        t, out = _timed(lambda: spherize(normed, features=feats, meta_features=meta_cols, samples=DMSO,
                                         method="ZCA-cor"))
        res["spherize_s"] = t
    else:
        from pycytominer import aggregate, normalize

        from phenovec.io.embeddings import EmbeddingStore

        t, cells = _timed(lambda: EmbeddingStore(store).read())
        res["read_s"] = t
        t, wells = _timed(lambda: aggregate(cells, strata=[PLATE, WELL], features=feats, operation="mean"))
        res["aggregate_s"] = t
        del cells
        wells = _annotate(wells)
        t, normed = _timed(lambda: pd.concat([
            normalize(g, features=feats, meta_features=meta_cols, samples=DMSO, method="mad_robustize")
            for _, g in wells.groupby(PLATE, sort=False)]).loc[wells.index])
        res["normalize_s"] = t
        t, out = _timed(lambda: normalize(normed, features=feats, meta_features=meta_cols, samples=DMSO,
                                          method="spherize", spherize_method="ZCA-cor"))
        res["spherize_s"] = t
    res["total_s"] = time.perf_counter() - t0
    res["peak_rss_mb"] = peak_mb() if ok else float("nan")
    res["wells"] = len(out)
    res["output_path"] = os.path.join(spec["tmp"], f"stream-{impl}-{n}.parquet")
    out.sort_values([PLATE, WELL]).reset_index(drop=True).to_parquet(res["output_path"])
    log(f"  stream {impl} n={n}: total {res['total_s']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB")
    return res


def _annotate(wells):
    """Treatment of each well (DMSO = wells whose number is a multiple of 10), as a platemap join would."""
    w = wells[WELL].str[1:].astype(int)
    return wells.assign(**{TREAT: np.where(w % 10 == 0, "DMSO", "cpd_" + (w // 2).astype(str))})


def write_cell_store(path: str, n: int, d: int, plates: int, seed: int, chunk: int = 262144) -> None:
    """n cells x d float32 on plates x 384 wells, rows grouped by well (as per-site outputs are), in chunks."""
    import pandas as pd

    from phenovec.io.embeddings import EmbeddingWriter

    rng = np.random.default_rng(seed)
    wells = plates * 384
    well_of_row = np.repeat(np.arange(wells), np.diff(np.linspace(0, n, wells + 1).astype(np.int64)))
    centres = rng.normal(0, 1, (wells, d)).astype(np.float32) * 0.3
    t = time.perf_counter()
    with EmbeddingWriter(path, [f"emb_{i}" for i in range(d)]) as w:
        for i in range(0, n, chunk):
            wr = well_of_row[i : i + chunk]
            x = rng.standard_normal((len(wr), d), dtype=np.float32)
            x += centres[wr]
            meta = pd.DataFrame({PLATE: "plate_" + (wr // 384).astype(str), WELL: "w" + (wr % 384).astype(str)})
            w.append(meta, x)
            if (i // chunk) % 8 == 0:
                log(f"    wrote {i + len(wr):,}/{n:,} rows ({time.perf_counter() - t:.0f} s)")


def child_main(spec: dict) -> dict:
    return run_stream(spec) if spec["case"] == "stream" else run_case(spec)


def run_child(spec: dict, timeout: float) -> dict:
    log(f"case={spec['case']} impl={spec['impl']} n={spec['n']} d={spec['d']}")
    return run_json_child(__file__, spec, timeout)


def compare(case: str, peer: dict, ours: dict) -> dict:
    import pandas as pd

    out = {"case": case, "n": ours["n"], "d": ours["d"]}
    key = "total_s" if case == "stream" else "median_s"
    if "error" in peer or "error" in ours:
        out["error"] = peer.get("error") or ours.get("error")
        return out
    out.update(peer_s=peer[key], phenovec_s=ours[key], speedup=peer[key] / ours[key],
               peer_peak_rss_mb=peer["peak_rss_mb"], phenovec_peak_rss_mb=ours["peak_rss_mb"])
    if case == "correlation":
        out["same_kept_features"] = peer["kept_features"] == ours["kept_features"]
        out["kept"] = len(ours["kept_features"])
    else:
        a, b = pd.read_parquet(peer["output_path"]), pd.read_parquet(ours["output_path"])
        if case == "stream":
            a, b = a.sort_values([PLATE, WELL]).reset_index(drop=True), b.sort_values([PLATE, WELL]).reset_index(drop=True)
        feats = [c for c in a.columns if not c.startswith("Metadata_")]
        out["max_abs_diff"] = _max_diff(a, b, feats)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cases", nargs="+", default=["spherize", "mad_robustize", "correlation"],
                    choices=["spherize", "mad_robustize", "correlation", "stream"])
    ap.add_argument("--spherize-n", type=int, default=20000)
    ap.add_argument("--mad-n", type=int, default=200000)
    ap.add_argument("--mad-d", type=int, default=500)
    ap.add_argument("--corr-n", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--corr", type=float, default=0.9)
    ap.add_argument("--plates", type=int, default=20)
    ap.add_argument("--stream-n", type=int, default=1000000)
    ap.add_argument("--stream-peer-n", type=int, default=200000)
    ap.add_argument("--stream-plates", type=int, default=40)
    ap.add_argument("--batch-rows", type=int, default=65536)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", help="work folder (default: a temporary folder, removed at the end)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child_main(json.loads(a.child)), default=float))
        return 0
    tmp = a.tmp or tempfile.mkdtemp(prefix="phenovec-process-bench-")
    os.makedirs(tmp, exist_ok=True)
    doc = {"started": _dt.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv[1:],
           "machine": machine_info(), "results": [], "comparisons": []}
    sizes = {"spherize": (a.spherize_n, a.dim), "mad_robustize": (a.mad_n, a.mad_d), "correlation": (a.corr_n, a.dim)}
    try:
        for case in a.cases:
            if case == "stream":
                runs = [("pycytominer", a.stream_peer_n), ("phenovec", a.stream_peer_n)]
                if a.stream_n != a.stream_peer_n:
                    runs.append(("phenovec", a.stream_n))
                res = {}
                for impl, n in runs:
                    spec = dict(case=case, impl=impl, n=n, d=a.dim, plates=a.stream_plates, seed=a.seed, tmp=tmp,
                                batch_rows=a.batch_rows)
                    res[(impl, n)] = run_child(spec, a.timeout)
                    doc["results"].append(res[(impl, n)])
                doc["comparisons"].append(compare(case, res[("pycytominer", a.stream_peer_n)],
                                                  res[("phenovec", a.stream_peer_n)]))
                if a.stream_n != a.stream_peer_n:
                    big = res[("phenovec", a.stream_n)]
                    doc["comparisons"].append({"case": "stream", "n": a.stream_n, "d": a.dim, "phenovec_s": big.get("total_s"),
                                               "phenovec_peak_rss_mb": big.get("peak_rss_mb"), "error": big.get("error")})
                continue
            n, d = sizes[case]
            pair = {}
            for impl in ("pycytominer", "phenovec"):
                spec = dict(case=case, impl=impl, n=n, d=d, plates=a.plates, seed=a.seed, repeats=a.repeats,
                            corr=a.corr, tmp=tmp)
                pair[impl] = run_child(spec, a.timeout)
                doc["results"].append(pair[impl])
            doc["comparisons"].append(compare(case, pair["pycytominer"], pair["phenovec"]))
            log(json.dumps(doc["comparisons"][-1], default=float))
    finally:
        if not a.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    emit_document(doc, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
