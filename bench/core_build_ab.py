"""A/B two builds of the Rust core (``phenovec._core``): build settings such as LTO, codegen units or target CPU.

Each of ``--a`` / ``--b`` is a folder holding a ``phenovec`` package (a copy of ``python/phenovec`` with that build's
``_core.abi3.so``). The hot paths run in a fresh child process per build, the builds alternating round by round
(``--rounds``), on the same inputs: decode + crop of ``--sites`` synthetic 1080 px sites (uncompressed and deflate,
``_core.crop_site`` as in ``crop_bench.py``), similarity + average precision of ``--n`` x ``--dim`` profiles
(``phenovec.evaluate.average_precision``) and the fast null (``mean_average_precision(null_method="fast")``).
Prints JSON: per build the median seconds of each path, and b / a per path (> 1: b slower). Example (session 21,
thin LTO vs none)::

    python bench/core_build_ab.py --a /tmp/ab/lto --b /tmp/ab/nolto --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np, pandas as pd
import phenovec._core as core
import phenovec.evaluate as pe
sites = json.loads(Path(sys.argv[1]).read_text())
n, dim = int(sys.argv[2]), int(sys.argv[3])
out = {"core": core.__file__}
for comp, group in sites.items():
    t = time.perf_counter()
    for s in group:
        core.crop_site(s["paths"], np.asarray(s["xs"]), np.asarray(s["ys"]), 128, "drop", False)
    out[f"crop_{comp}"] = time.perf_counter() - t
rng = np.random.default_rng(0)
x = rng.standard_normal((n, dim)).astype(np.float32)
meta = pd.DataFrame({"Metadata_g": rng.integers(0, n // 10, n).astype(str)})
t = time.perf_counter()
ap = pe.average_precision(meta, x, ["Metadata_g"], [], [], ["Metadata_g"], progress_bar=False)
out["average_precision"] = time.perf_counter() - t
t = time.perf_counter()
pe.mean_average_precision(ap, ["Metadata_g"], null_size=100000, threshold=0.05, seed=0, null_method="fast")
out["null_fast"] = time.perf_counter() - t
print(json.dumps(out))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, type=Path, help="folder holding build A's phenovec package")
    ap.add_argument("--b", required=True, type=Path, help="folder holding build B's phenovec package")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    ap.add_argument("--sites", type=int, default=8, help="synthetic 1080 px sites, ~200 nuclei each (default 8)")
    ap.add_argument("--n", type=int, default=12000, help="profiles for average precision (default 12000)")
    ap.add_argument("--dim", type=int, default=512, help="features per profile (default 512)")
    a = ap.parse_args(argv)
    for d in (a.a, a.b):
        if not (d / "phenovec" / "_core.abi3.so").is_file():
            ap.error(f"{d}: no phenovec/_core.abi3.so below it")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import crop_bench

    with tempfile.TemporaryDirectory() as tmp:
        made = crop_bench.make_sites(Path(tmp), a.sites, 1080, 200, 0, ["none", "deflate"])
        sites = Path(tmp) / "sites.json"
        sites.write_text(json.dumps({c: [{"paths": p, "xs": x.tolist(), "ys": y.tolist()} for p, x, y in v]
                                     for c, v in made.items()}))
        runs = {"a": [], "b": []}
        for r in range(a.rounds):
            for name, folder in (("a", a.a), ("b", a.b)):
                env = {**os.environ, "PYTHONPATH": str(folder)}
                res = subprocess.run([sys.executable, "-c", CHILD, str(sites), str(a.n), str(a.dim)], env=env,
                                     capture_output=True, text=True, check=True)
                runs[name].append(json.loads(res.stdout))
                print(f"round {r + 1} {name}: {res.stdout.strip()}", file=sys.stderr)
    keys = [k for k in runs["a"][0] if k != "core"]
    med = {n: {k: statistics.median(x[k] for x in runs[n]) for k in keys} for n in runs}
    print(json.dumps({"a": str(a.a), "b": str(a.b), "rounds": a.rounds, "median_s": med,
                      "b_over_a": {k: med["b"][k] / med["a"][k] for k in keys}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
