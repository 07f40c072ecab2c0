"""Measurement helpers shared by the benchmarks: peak RSS of this process, machine description, logging."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import platform
import sys
import time


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not possible."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    return _status_kb("VmHWM") / 1024


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def machine_info() -> dict:
    import numpy
    info = {"cores": os.cpu_count(), "affinity_cores": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    info["loadavg_start"] = os.getloadavg()
    try:
        cfg = numpy.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        info["numpy_blas"] = {k: blas.get(k) for k in ("name", "version", "openblas configuration")}
    except Exception as e:  # pragma: no cover - depends on the numpy build
        info["numpy_blas"] = f"unavailable: {e}"
    try:
        from threadpoolctl import threadpool_info
        info["blas_threads"] = [{k: d.get(k) for k in ("internal_api", "num_threads", "architecture")}
                                for d in threadpool_info()]
    except ImportError:
        pass
    return info


def run_json_child(script: str, spec: dict, timeout: float) -> dict:
    """Run ``python SCRIPT --child SPEC_JSON`` (a fresh process: per-case peak RSS) and parse the JSON document
    on its last stdout line; on timeout or failure return ``spec`` with an ``error``. Adds ``child_wall_s``."""
    t = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, os.path.abspath(script), "--child", json.dumps(spec)],
                           stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"  timed out after {timeout:.0f} s")
        return dict(spec, error=f"timed out after {timeout:.0f} s")
    if p.returncode != 0:
        log(f"  child failed with rc={p.returncode}")
        return dict(spec, error=f"child exited with {p.returncode}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["child_wall_s"] = time.perf_counter() - t
    return res


def emit_document(doc: dict, out: str | None) -> None:
    """Stamp ``finished``, print the benchmark's JSON document on stdout and write it to ``out`` if given."""
    import datetime as _dt

    doc["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    text = json.dumps(doc, indent=2, default=float)
    print(text)
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            f.write(text)
