"""Measuring: wall-clock repeats and their median, peak RSS of this process, the machine's description.

Shared by ``phenovec bench`` and the repository's ``bench/*.py`` peer benchmarks (``bench/measure.py`` re-exports
this module), so a rate means the same in both: work / median seconds over the repeats.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _status_kb(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:  # not Linux
        pass
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


def timed(fn: Callable, repeats: int, label: str | None = None):
    """Run ``fn()`` ``repeats`` times: ``(median seconds, all seconds, the last return value)``; each repeat is
    logged with ``label``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times, ret = [], None
    for r in range(repeats):
        t = time.perf_counter()
        ret = fn()
        times.append(time.perf_counter() - t)
        if label:
            log(f"  {label} repeat {r + 1}: {times[-1]:.3f} s")
    return statistics.median(times), times, ret


def rate(fn: Callable[[], float], repeats: int, unit: str, label: str | None = None) -> dict:
    """Time ``fn`` (which returns the work it did, e.g. cells) ``repeats`` times: ``{"rate": work / median s,
    "unit", "work", "median_s", "times_s", "repeats", "peak_rss_mb"}`` (the work of the last repeat; the peak RSS
    of this process over the repeats, NaN where it cannot be reset)."""
    can_reset = reset_peak()
    med, times, work = timed(fn, repeats, label)
    return {"rate": float(work) / med if med > 0 else float("inf"), "unit": unit, "work": float(work),
            "median_s": med, "times_s": times, "repeats": len(times),
            "peak_rss_mb": peak_mb() if can_reset else float("nan")}


def machine_info() -> dict:
    import numpy

    info = {"cores": os.cpu_count(), "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "node": platform.node()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    if hasattr(os, "getloadavg"):
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
