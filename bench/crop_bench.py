"""Benchmark single-cell cropping: phenovec vs a pure-Python baseline vs the bare read + decode bound.

Input: ``--sites`` synthetic Cell-Painting sites (``phenovec.ingest.synth.synth_plate``: 5 channels, 16-bit,
``--size`` x ``--size`` px, ``--cells`` +- 5 % nuclei each), written uncompressed and then rewritten with the
same pixels (tifffile, 64-row strips, no predictor) as deflate and LZW. For each compression, in the same run:

(a) ``phenovec``: ``phenovec._core.crop_site(paths, xs, ys, box, "drop", False)`` per site (decodes the five
    channels in parallel in Rust, crops every nucleus in parallel; returns N x C x box x box uint16 + codes);
    ``phenovec_compact``: the same with ``compact=True`` (rows only for kept cells, no zero rows for dropped ones);
(b) ``python``: the same work in pure Python: ``tifffile.imread`` of each channel, ``np.stack``, then numpy
    slicing per cell into a zero-initialised N x C x box x box uint16 array, with the same geometry
    (top-left = floor(c + 0.5) - box // 2) and the same drop rule (a box not wholly inside is left zero);
(c) the bound, read + decode only, no cropping: ``decode_rust`` = ``_core.decode_image`` of every channel
    file on a thread pool of ``os.cpu_count()`` workers (the GIL is released while decoding);
    ``decode_rust_serial`` = the same one file at a time; ``decode_tifffile`` = ``tifffile.imread`` one file
    at a time.

Each variant is timed ``--repeats`` times over all sites (files are read once before timing, so the page cache
is warm in every variant: this measures decode + crop, not disk); the medians are reported. Rates:
``cells_per_s`` counts every nucleus processed (kept or dropped), ``crops_per_s`` only the kept (inside) crops;
for the bound, ``sites_per_s`` and the implied cells/s at the same cells per site. Before timing, (a) and (b)
are checked for identical crops and keep/drop decisions on the first site (``check_first_site``).

Ratios per compression: ``speedup_vs_python`` = python time / phenovec time; ``x_of_bound`` = phenovec time /
``decode_rust`` time (1.0 = cropping costs nothing on top of decoding).

Output: one JSON document on stdout (and ``--out``), progress on stderr. Example::

    python bench/crop_bench.py --sites 12 --repeats 3 --compressions none deflate lzw --out bench/out/crop.json
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from measure import emit_document, log, machine_info, timed

CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
TIFFFILE_CODEC = {"deflate": "zlib", "lzw": "lzw"}


def make_sites(tmp: Path, n_sites: int, size: int, cells: int, seed: int, compressions) -> dict:
    """Write the synthetic sites; returns {compression: [(paths, xs, ys), ...]} (same pixels in every set)."""
    import pandas as pd
    import tifffile

    from phenovec.ingest.synth import synth_plate

    spw = 2 if n_sites % 2 == 0 else 1
    lo, hi = int(cells * 0.95), int(cells * 1.05)
    t = time.perf_counter()
    root = tmp / "none"
    p = synth_plate(root, plates=1, wells=n_sites // spw, sites_per_well=spw, size=size, cells_per_site=(lo, hi),
                    seed=seed, compression="none", progress=False)
    index, nuc = pd.read_csv(p["index"]), pd.read_csv(p["nuclei"])
    log(f"synthesised {len(index)} sites ({len(nuc)} nuclei) in {time.perf_counter() - t:.1f} s")
    keys = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    groups = {k: g for k, g in nuc.groupby(keys, sort=False)}
    base = []
    for _, row in index.iterrows():
        g = groups[tuple(row[k] for k in keys)]
        rel = [row[f"FileName_{c}"] for c in CHANNELS]
        base.append((rel, g["Nuclei_Location_Center_X"].to_numpy(np.float64),
                     g["Nuclei_Location_Center_Y"].to_numpy(np.float64)))
    out = {}
    for comp in compressions:
        sites = []
        for rel, xs, ys in base:
            paths = []
            for r in rel:
                src = root / r
                if comp == "none":
                    paths.append(str(src))
                    continue
                dst = tmp / comp / r
                dst.parent.mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(dst, tifffile.imread(src), compression=TIFFFILE_CODEC[comp],
                                 photometric="minisblack", metadata=None, rowsperstrip=64)
                paths.append(str(dst))
            sites.append((paths, xs, ys))
        out[comp] = sites
        mb = sum(os.path.getsize(q) for s in sites for q in s[0]) / 2**20
        log(f"{comp}: {len(sites)} sites, {mb:.1f} MiB on disk")
    return out


def crop_phenovec(sites, box, compact=False):
    from phenovec import _core

    kept = 0
    for paths, xs, ys in sites:
        crops, codes = _core.crop_site(paths, xs, ys, box, "drop", False, compact=compact)
        kept += int((codes == 0).sum())
    return kept


def crop_python_site(paths, xs, ys, box):
    """The baseline for one site: tifffile + numpy slicing; returns (crops, kept mask)."""
    import tifffile

    img = np.stack([tifffile.imread(p) for p in paths])
    _, h, w = img.shape
    out = np.zeros((len(xs), img.shape[0], box, box), np.uint16)
    half = box // 2
    c0s = np.floor(xs + 0.5).astype(np.int64) - half
    r0s = np.floor(ys + 0.5).astype(np.int64) - half
    kept = (r0s >= 0) & (c0s >= 0) & (r0s + box <= h) & (c0s + box <= w)
    for i in np.flatnonzero(kept):
        r0, c0 = r0s[i], c0s[i]
        out[i] = img[:, r0:r0 + box, c0:c0 + box]
    return out, kept


def crop_python(sites, box):
    kept = 0
    for paths, xs, ys in sites:
        _, k = crop_python_site(paths, xs, ys, box)
        kept += int(k.sum())
    return kept


def decode_rust(sites, workers):
    from phenovec import _core

    files = [p for s in sites for p in s[0]]
    with ThreadPoolExecutor(workers) as ex:
        return sum(a.size for a in ex.map(_core.decode_image, files))


def decode_rust_serial(sites):
    from phenovec import _core

    return sum(_core.decode_image(p).size for s in sites for p in s[0])


def decode_tifffile(sites):
    import tifffile

    return sum(tifffile.imread(p).size for s in sites for p in s[0])


def check_first_site(site, box) -> dict:
    from phenovec import _core

    paths, xs, ys = site
    a, codes = _core.crop_site(paths, xs, ys, box, "drop", False)
    b, kept = crop_python_site(paths, xs, ys, box)
    same = bool(a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
                and np.array_equal(codes == 0, kept) and set(np.unique(codes)) <= {0, 3})
    return {"identical": same, "cells": len(xs), "kept": int(kept.sum()), "shape": list(a.shape)}


def bench_compression(comp, sites, box, repeats, workers) -> dict:
    n_sites = len(sites)
    cells = sum(len(s[1]) for s in sites)
    check = check_first_site(sites[0], box)
    if not check["identical"]:
        raise SystemExit(f"{comp}: phenovec and the Python baseline disagree on the first site: {check}")
    decode_tifffile(sites)  # warm the page cache (every variant then reads from memory)
    res = {"compression": comp, "sites": n_sites, "cells": cells, "check_first_site": check}
    variants = [
        ("phenovec", lambda: crop_phenovec(sites, box)),
        ("phenovec_compact", lambda: crop_phenovec(sites, box, compact=True)),
        ("python", lambda: crop_python(sites, box)),
        ("decode_rust", lambda: decode_rust(sites, workers)),
        ("decode_rust_serial", lambda: decode_rust_serial(sites)),
        ("decode_tifffile", lambda: decode_tifffile(sites)),
    ]
    for name, fn in variants:
        med, times, ret = timed(fn, repeats, f"{comp} {name}")
        r = {"median_s": med, "times_s": times, "sites_per_s": n_sites / med, "cells_per_s": cells / med}
        if name in ("phenovec", "phenovec_compact", "python"):
            r["crops_kept"] = ret
            r["crops_per_s"] = ret / med
        res[name] = r
    if res["phenovec"]["crops_kept"] != res["python"]["crops_kept"]:
        raise SystemExit(f"{comp}: kept crops differ: {res['phenovec']['crops_kept']} vs {res['python']['crops_kept']}")
    pv = res["phenovec"]["median_s"]
    res["speedup_vs_python"] = res["python"]["median_s"] / pv
    res["compact_speedup_vs_python"] = res["python"]["median_s"] / res["phenovec_compact"]["median_s"]
    res["x_of_bound"] = pv / res["decode_rust"]["median_s"]
    res["x_of_tifffile_decode"] = pv / res["decode_tifffile"]["median_s"]
    log(f"{comp}: phenovec {res['phenovec']['cells_per_s']:.0f} cells/s, python {res['python']['cells_per_s']:.0f}"
        f" cells/s (x{res['speedup_vs_python']:.2f}), bound {res['decode_rust']['cells_per_s']:.0f} cells/s"
        f" (phenovec at {res['x_of_bound']:.2f}x the bound time)")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=12)
    ap.add_argument("--size", type=int, default=1080)
    ap.add_argument("--cells", type=int, default=200, help="nuclei per site (+- 5 %%)")
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--compressions", nargs="+", default=["none", "deflate"], choices=["none", "deflate", "lzw"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="threads of the decode_rust bound")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", help="work folder (default: a temporary folder, removed at the end)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.sites < 1 or a.repeats < 1:
        ap.error("--sites and --repeats must be at least 1")
    tmp = Path(a.tmp or tempfile.mkdtemp(prefix="phenovec-crop-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    doc = {"started": _dt.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv[1:],
           "machine": machine_info(), "box": a.box, "edge": "drop", "size": a.size, "channels": len(CHANNELS),
           "results": []}
    try:
        sets = make_sites(tmp, a.sites, a.size, a.cells, a.seed, a.compressions)
        for comp in a.compressions:
            doc["results"].append(bench_compression(comp, sets[comp], a.box, a.repeats, a.workers))
    finally:
        if not a.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    emit_document(doc, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
