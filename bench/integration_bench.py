"""Benchmark phenovec's integration metric set against scib-metrics (0.6.1), end to end, side by side.

The metric set: scib's ``silhouette_label``, ``silhouette_batch``, ``isolated_labels``,
``nmi_ari_cluster_labels_kmeans``, ``clisi_knn``, ``ilisi_knn``, ``kbet_per_label``, ``graph_connectivity`` and
``pcr_comparison`` (against a second, "pre-integration" embedding of the same rows), with scib-metrics'
Benchmarker neighbour counts (one 90-NN graph cut to 15 / 50 / 90); with ``--sbee`` also 0.6.1's ``sbee`` (on the
90-NN graph, as its Benchmarker), timed as a step of its own.

- ``scib``: what a scib-metrics user runs: ``scib_metrics.nearest_neighbors.pynndescent(X, 90, random_state=0,
  n_jobs=--jobs)`` (the Benchmarker's default neighbour search, approximate) then each ``scib_metrics`` function
  as ``Benchmarker.benchmark`` calls it (JAX on the CPU, float32).
- ``ours``: ``phenovec.evaluate.integration``: the exact kNN graph and the label silhouettes from one pass over the
  distances (``knn_graph_and_silhouettes``), the silhouettes shared by ``silhouette_label`` and ``isolated_labels``,
  as ``integration_table`` does; then the same functions. phenovec's extra label mAP is timed
  apart (``--map-max-n``) and is not in the ratio.

Input: seeded synthetic profiles, ``n`` rows x ``--dim`` features (float32), ``--labels`` labels and
``--batches`` batches with label and batch offsets; both sides get the same arrays (regenerated from the seed in
each child). Each (side, n) runs in a fresh child process: ``import_s`` (importing the package), ``wall_s`` (the
metric set, including JIT compilation: numba's is cached on disk after the first run, JAX compiles in every
process, as its users pay), per-metric seconds, ``peak_rss_mb`` (the child's VmHWM after data generation was
reset: input + interpreter + metrics), ``peak_tree_rss_mb`` (the sampled peak of the child plus its worker
processes, which kbet_per_label starts at scale), the load average and the metric values, so the two sides can be compared (kNN-dependent
metrics differ a little: scib's neighbours are approximate).

Example (the numbers of RESULTS.md: both sides at 10k and 100k, then phenovec alone at 300k; 1M is ~11x the
300k distance pass, hours on 2 cores)::

    python bench/integration_bench.py --n 10000 100000 --repeats 3 --scib-repeats 1 --out integration.json
    python bench/integration_bench.py --n 3000 --repeats 1 --scib-repeats 0 --ours-only-n 300000 --map-max-n 0 \
        --out integration_300k.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import emit_document, log, machine_info, peak_mb, reset_peak, run_json_child  # noqa: E402


def make_data(n: int, dim: int, n_labels: int, n_batches: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels, n)
    batches = rng.integers(0, n_batches, n)
    centres = rng.normal(size=(n_labels, dim)).astype(np.float32) * 0.8
    offsets = rng.normal(size=(n_batches, dim)).astype(np.float32) * 0.5
    pre = rng.standard_normal((n, dim), dtype=np.float32) + centres[labels] + offsets[batches]
    post = pre - 0.7 * offsets[batches]  # a partial "correction"
    return pre, post, labels, batches


def run_scib(pre, post, labels, batches, jobs: int, sbee: bool = False) -> tuple[dict, dict]:
    import scib_metrics as sm
    from scib_metrics.nearest_neighbors import pynndescent

    t, v = {}, {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        t[name] = time.perf_counter() - t0
        log(f"    scib {name}: {t[name]:.1f} s")
        return out

    nn = timed("knn_graph", lambda: pynndescent(post, n_neighbors=90, random_state=0, n_jobs=jobs))
    nn15, nn50, nn90 = nn.subset_neighbors(15), nn.subset_neighbors(50), nn.subset_neighbors(90)
    v["isolated_labels"] = timed("isolated_labels", lambda: sm.isolated_labels(post, labels, batches))
    km = timed("kmeans", lambda: sm.nmi_ari_cluster_labels_kmeans(post, labels))
    v["kmeans_nmi"], v["kmeans_ari"] = km["nmi"], km["ari"]
    v["silhouette_label"] = timed("silhouette_label", lambda: sm.silhouette_label(post, labels))
    v["clisi_knn"] = timed("clisi_knn", lambda: sm.clisi_knn(nn90, labels))
    v["silhouette_batch"] = timed("silhouette_batch", lambda: sm.silhouette_batch(post, labels, batches))
    v["ilisi_knn"] = timed("ilisi_knn", lambda: sm.ilisi_knn(nn90, batches))
    v["kbet_per_label"] = timed("kbet_per_label", lambda: sm.kbet_per_label(nn50, batches, labels))
    v["graph_connectivity"] = timed("graph_connectivity", lambda: sm.graph_connectivity(nn15, labels))
    v["pcr_comparison"] = timed("pcr_comparison", lambda: sm.pcr_comparison(pre, post, batches, categorical=True))
    if sbee:
        v["sbee"] = timed("sbee", lambda: sm.sbee(nn90, post, batches, labels))
    return t, v


def run_ours(pre, post, labels, batches, with_map: bool, sbee: bool = False) -> tuple[dict, dict]:
    import phenovec.evaluate.integration as pi
    from phenovec.evaluate.integration.distance_pass import knn_graph_and_silhouettes
    from phenovec.evaluate.integration.isolated_labels import isolated_labels_from_samples
    from phenovec.evaluate.integration.silhouette import _label_asw

    t, v = {}, {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        t[name] = time.perf_counter() - t0
        log(f"    ours {name}: {t[name]:.1f} s")
        return out

    g, sil = timed("knn_graph_and_silhouettes", lambda: knn_graph_and_silhouettes(post, labels, 90))
    g15, g50, g90 = g.subset_neighbors(15), g.subset_neighbors(50), g
    v["isolated_labels"] = isolated_labels_from_samples(sil, labels, batches)
    v["silhouette_label"] = _label_asw(sil, True)
    km = timed("kmeans", lambda: pi.nmi_ari_cluster_labels_kmeans(post, labels))
    v["kmeans_nmi"], v["kmeans_ari"] = km["nmi"], km["ari"]
    v["clisi_knn"] = timed("clisi_knn", lambda: pi.clisi_knn(g90, labels))
    v["silhouette_batch"] = timed("silhouette_batch", lambda: pi.silhouette_batch(post, labels, batches))
    v["ilisi_knn"] = timed("ilisi_knn", lambda: pi.ilisi_knn(g90, batches))
    v["kbet_per_label"] = timed("kbet_per_label", lambda: pi.kbet_per_label(g50, batches, labels))
    v["graph_connectivity"] = timed("graph_connectivity", lambda: pi.graph_connectivity(g15, labels))
    v["pcr_comparison"] = timed("pcr_comparison", lambda: pi.pcr_comparison(pre, post, batches, categorical=True))
    if sbee:
        v["sbee"] = timed("sbee", lambda: pi.sbee(g90, post, batches, labels))
    if with_map:  # not part of the compared set
        t0 = time.perf_counter()
        v["mean_average_precision"] = pi.label_map(post, labels)
        t["mean_average_precision_extra"] = time.perf_counter() - t0
    return t, v


class TreePeak:
    """Peak of the summed RSS of this process and its descendants (kbet_per_label's worker processes), sampled
    every ``interval`` seconds in a thread (VmHWM covers this process alone)."""

    def __init__(self, interval: float = 0.1):
        import threading

        import psutil

        self.proc, self.peak, self.interval = psutil.Process(), 0, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        for p in [self.proc] + self.proc.children(recursive=True):
            try:
                total += p.memory_info().rss
            except Exception:  # a worker that just exited
                pass
        return total

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._sample())

    def __enter__(self):
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def child(spec: dict) -> dict:
    t0 = time.perf_counter()
    if spec["side"] == "scib":
        import scib_metrics  # noqa: F401
    else:
        import phenovec.evaluate.integration  # noqa: F401
    import_s = time.perf_counter() - t0
    pre, post, labels, batches = make_data(spec["n"], spec["dim"], spec["labels"], spec["batches"], spec["seed"])
    reset_peak()
    t0 = time.perf_counter()
    with TreePeak() as tree:
        if spec["side"] == "scib":
            steps, values = run_scib(pre, post, labels, batches, spec["jobs"], spec["sbee"])
        else:
            steps, values = run_ours(pre, post, labels, batches, spec["n"] <= spec["map_max_n"], spec["sbee"])
    wall = time.perf_counter() - t0 - steps.get("mean_average_precision_extra", 0.0)
    return dict(spec, import_s=import_s, wall_s=wall, steps_s=steps, values=values, peak_rss_mb=peak_mb(),
                peak_tree_rss_mb=tree.peak / 2**20, load_average=os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child")
    ap.add_argument("--n", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--ours-only-n", type=int, nargs="*", default=[], help="sizes run for phenovec alone")
    ap.add_argument("--dim", type=int, default=50)
    ap.add_argument("--labels", type=int, default=30)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="repeats of phenovec per size (median reported)")
    ap.add_argument("--scib-repeats", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=os.cpu_count(), help="pynndescent n_jobs for scib's kNN")
    ap.add_argument("--map-max-n", type=int, default=20000, help="time phenovec's label mAP up to this n")
    ap.add_argument("--sbee", action="store_true", help="add sBEE to the set (scib-metrics >= 0.6)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(json.loads(a.child)), default=float))
        return
    doc = {"benchmark": "integration metric set: phenovec vs scib-metrics", "machine": machine_info(),
           "scib_metrics": __import__("importlib.metadata").metadata.version("scib-metrics"), "runs": [],
           "summary": []}
    base = {"dim": a.dim, "labels": a.labels, "batches": a.batches, "seed": a.seed, "jobs": a.jobs,
            "map_max_n": a.map_max_n, "sbee": a.sbee}
    for n in list(a.n) + list(a.ours_only_n):
        per = {}
        sides = ["ours", "scib"] if n in a.n else ["ours"]
        for side in sides:
            reps = a.repeats if side == "ours" else a.scib_repeats
            for r in range(reps):
                log(f"n={n} {side} repeat {r + 1}/{reps}")
                res = run_json_child(__file__, dict(base, side=side, n=n, repeat=r), a.timeout)
                doc["runs"].append(res)
                per.setdefault(side, []).append(res)
                if "error" not in res:
                    log(f"  {res['wall_s']:.1f} s, peak {res['peak_rss_mb']:.0f} MB (with workers "
                        f"{res['peak_tree_rss_mb']:.0f} MB), load {res['load_average']}")
        row = {"n": n}
        for side, rs in per.items():
            ok = [r for r in rs if "error" not in r]
            if ok:
                row[f"{side}_median_s"] = statistics.median(r["wall_s"] for r in ok)
                row[f"{side}_peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
                row[f"{side}_peak_tree_rss_mb"] = max(r["peak_tree_rss_mb"] for r in ok)
                row[f"{side}_runs_s"] = [r["wall_s"] for r in ok]
                row[f"{side}_load_average"] = [r["load_average"] for r in ok]
                row[f"{side}_values"] = ok[-1]["values"]
        if "ours_median_s" in row and "scib_median_s" in row:
            row["speedup"] = row["scib_median_s"] / row["ours_median_s"]
            if a.sbee:
                med = {side: statistics.median(r["steps_s"]["sbee"] for r in per[side] if "error" not in r)
                       for side in ("ours", "scib")}
                row["sbee_s"] = med
                row["sbee_speedup"] = med["scib"] / med["ours"]
            row["max_abs_value_diff"] = max(abs(row["ours_values"][k] - row["scib_values"][k])
                                            for k in row["scib_values"])
        doc["summary"].append(row)
        log(json.dumps({k: v for k, v in row.items() if not k.endswith("values")}, default=float))
        if a.out:  # the document so far, so a long run that is stopped keeps its finished sizes
            with open(a.out, "w") as f:
                json.dump(doc, f, indent=2, default=float)
    emit_document(doc, a.out)


if __name__ == "__main__":
    main()
