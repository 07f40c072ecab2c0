"""Every GPU path of phenovec in one command: PASS / FAIL / SKIP per check, one JSON record (issue 31).

    python bench/gpu_check.py --out OUTDIR                 # the lent GPU machine (<= ~5 min, bench/GPU.md)
    NUMBA_ENABLE_CUDASIM=1 python bench/gpu_check.py --quick --out OUTDIR   # a CPU machine (tests/test_gpu_check.py)
    python bench/gpu_check.py --check kernels --quick      # one check

Checks (each runs in its own child process with its own time limit, so a crash, a CUDA error that poisons the
context or a hang in one does not stop the others; an exception is recorded with the tail of its traceback):

- ``kernels``: the Numba CUDA kernels ``kernels/covariance.py`` (streaming centred cross products) and
  ``kernels/whiten.py`` against their CPU (BLAS) paths on 1M x 1,280 float32 and float64 rows, the public
  ``Spherizer(device="cuda")`` against ``device="cpu"``, and their time against CuPy's ``X.T @ X`` (the bound).
  Without a GPU they run under the Numba CUDA simulator when ``NUMBA_ENABLE_CUDASIM=1`` (small sizes), else SKIP.
- ``train``: the trainer's EfficientNet-B0 (``phenovec.train.models``) at batch 256, 5 x 128 x 128, a few hundred
  steps with fp16 autocast + GradScaler (the loop's AMP), bf16 autocast and fp32, on synthetic images whose class
  shows in a smooth per-class pattern (so the loss must fall): loss first / last, finite, falling, images/s. Then
  the real loop, ``phenovec.train.train()``, for two epochs over a synthetic crop store when zarr imports (it needs
  zarr for the store; SKIP otherwise). On a CPU machine: torch's CPU device, fp32 and bf16 (fp16 + GradScaler is the
  loop's CUDA path).
- ``ort_cuda``: onnxruntime's CUDA execution provider, when onnxruntime lists it: a model exported with
  ``phenovec.export.export_onnx``, ``ProfileSession`` on CPU vs CUDA (parity), IO binding with the input on the
  device, ``precision="fp16"`` (the runtime's answer), throughput at batch 256 and 1024. Else SKIP naming why.
- ``ort_tensorrt``: the same with TensorRT (fp32 and fp16, engine cache), when listed and ``tensorrt`` imports.
- ``eval``: ``phenovec.evaluate.average_precision(device="cuda")`` against the CPU path on N = 20,000 x 1,280
  synthetic well profiles (float32; float64 on 5,000) and the reduced precisions on the GPU: max |dAP|, times.
  Without a GPU: the same torch code on PyTorch's CPU device (``device="torch-cpu"``).
- ``harmony``: ``run_harmony(device="cuda")`` against ``device=None`` (the exact CPU kernels) on 100,000 cells x 50
  PCs with 3 batch variables (``bench/harmony_bench.py``'s synthetic data): max relative |dZ_corr|, iterations,
  times, speed-up. Without a GPU: torch's CPU device.
- ``auto``: what ``device="auto"`` picks: ``phenovec.process.kernel_loader.resolve_device``, the runtime's
  providers (``phenovec.runtime.providers.choose_providers``), the trainer's ``device_from_name``, the evaluation
  backend's ``resolve_device`` and ``run_harmony(device="auto")`` (seen from its result: the exact CPU path gives
  the same bits as ``device=None``), each against the hardware the process sees.

They run in the order of :data:`CHECKS` (the quick ones first) within ``--budget-s``; a check that outruns its own
limit is killed with its whole process group and is a FAIL that keeps the parts it finished. ``--quick``: tiny sizes
and one BLAS / OpenMP / Numba thread per check (a shared CPU machine). ``--out DIR`` writes ``gpu_check.json``
(machine: GPU, memory, driver, versions; every check's numbers) after every check and ``gpu_check.log`` (the
children's output). Nothing hardware-dependent is imported at module level: the script imports torch, numba, CuPy
and onnxruntime inside the checks only. Exit status 1 when a check FAILed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
#: run order: the quick checks first, so that a check that hangs until its limit costs the slow ones, not them
CHECKS = ("auto", "harmony", "eval", "kernels", "train", "ort_cuda", "ort_tensorrt")
#: each check's own time limit in seconds (full size, quick); the run's --budget-s caps them all together
LIMITS = {"kernels": (120, 150), "train": (150, 150), "ort_cuda": (90, 120), "ort_tensorrt": (150, 120),
          "eval": (75, 90), "harmony": (75, 90), "auto": (45, 90)}
TRACE_CHARS = 2500
#: the running child's result file and its check's result dict (parts are written there as they finish)
PARTIAL: dict = {}


# ------------------------------------------------------------------------------------------------- sizes


def sizes(quick: bool) -> dict:
    """Problem sizes: the issue's on a GPU, tiny ones for the CPU test (--quick)."""
    if quick:
        return {"kern_rows": 40, "kern_dim": 12, "kern_chunk": 16, "kern_tile": 8, "kern_sph_rows": 30, "kern_sph_dim": 6,
                "train_arch": "efficientnet_tiny", "train_batch": 16, "train_side": 32, "train_steps": 14,
                "train_classes": 4, "train_warmup": 1, "loop_arch": "resnet_tiny", "loop_box": 48, "loop_batch": 32,
                "ort_arch": "resnet_tiny", "ort_box": 64, "ort_batches": (8, 16), "ort_parity": 8,
                "eval_n": 300, "eval_dim": 32, "eval_n64": 300, "harmony_n": 2000, "harmony_d": 10, "auto_n": 300}
    return {"kern_rows": 1_000_000, "kern_dim": 1280, "kern_chunk": 262_144, "kern_tile": 16,
            "kern_sph_rows": 200_000, "kern_sph_dim": 1280,
            "train_arch": "efficientnet_b0", "train_batch": 256, "train_side": 128, "train_steps": 200,
            "train_classes": 16, "train_warmup": 5, "loop_arch": "efficientnet_b0", "loop_box": 128, "loop_batch": 256,
            "ort_arch": "efficientnet_b0", "ort_box": 128, "ort_batches": (256, 1024), "ort_parity": 64,
            "eval_n": 20_000, "eval_dim": 1280, "eval_n64": 5_000, "harmony_n": 100_000, "harmony_d": 50,
            "auto_n": 600}


# ------------------------------------------------------------------------------------------------- helpers


class Skip(Exception):
    """A check or part that cannot run here; the message names the missing hardware or package."""


def trace_tail(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return text[-TRACE_CHARS:]


def combine(parts: dict) -> tuple[str, str]:
    """A check's status from its parts: FAIL if any failed, else PASS if any passed, else SKIP."""
    st = {k: v.get("status") for k, v in parts.items()}
    failed = [k for k, s in st.items() if s == "FAIL"]
    passed = [k for k, s in st.items() if s == "PASS"]
    skipped = [k for k, s in st.items() if s == "SKIP"]
    if failed:
        return "FAIL", "failed: " + ", ".join(f"{k} ({parts[k].get('reason', '')})" for k in failed)
    if passed:
        why = "passed: " + ", ".join(passed)
        if skipped:
            why += "; skipped: " + ", ".join(f"{k} ({parts[k].get('reason', '')})" for k in skipped)
        return "PASS", why
    return "SKIP", "; ".join(f"{k}: {parts[k].get('reason', '')}" for k in skipped) or "nothing ran"


def run_part(parts: dict, name: str, fn, *args, **kw) -> dict:
    """Run one part of a check: its dict (status PASS/FAIL/SKIP + numbers), an exception recorded as FAIL."""
    t0 = time.perf_counter()
    try:
        res = fn(*args, **kw)
    except Skip as s:
        res = {"status": "SKIP", "reason": str(s)}
    except Exception as e:  # noqa: BLE001 - every failure is a result here
        res = {"status": "FAIL", "reason": f"{type(e).__name__}: {e}"[:400], "traceback": trace_tail(e)}
    res.setdefault("status", "PASS")
    res["wall_s"] = round(time.perf_counter() - t0, 3)
    parts[name] = res
    if PARTIAL.get("path"):  # what the check has so far, for a parent that has to stop it
        write_json_atomic(Path(PARTIAL["path"]), {"check": {**PARTIAL.get("res", {}), "status": "RUNNING"}})
    return res


def started(res: dict) -> dict:
    """Register a check's result dict so that its finished parts survive a timeout (see run_part)."""
    PARTIAL["res"] = res
    return res


def verdict(ok: bool, good: str, bad: str) -> dict:
    return {"status": "PASS" if ok else "FAIL", "reason": good if ok else bad}


def sync_torch():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, *args, sync=None, **kw):
    """(result, seconds) of one call; ``sync`` is called before reading the clock (device work)."""
    if sync:
        sync()
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    if sync:
        sync()
    return out, time.perf_counter() - t0


def ensure_phenovec():
    """Import phenovec from the installed package, else from this checkout's python/ (the lent machine)."""
    try:
        import phenovec  # noqa: F401
    except ImportError:
        so = sorted((REPO / "python" / "phenovec").glob("_core*.so"))
        if not so:
            raise ImportError(f"phenovec is not installed and {REPO / 'python' / 'phenovec'} has no _core*.so (the "
                              "Rust extension is git-ignored: carry python/phenovec/_core.abi3.so, bench/GPU.md)") from None
        sys.path.insert(0, str(REPO / "python"))
        import phenovec  # noqa: F401


class Ctx:
    """What a check knows: sizes, the asked device, a work folder shared by the checks of one run."""

    def __init__(self, args):
        self.quick = args.quick
        self.sizes = sizes(args.quick)
        self.device = args.device
        self.work = Path(args.work)
        self.ort_stand_in = args.ort_stand_in

    def torch_gpu(self) -> bool:
        """Whether the torch checks run on CUDA (``--device cpu`` forces the CPU; ``cuda`` insists on a GPU)."""
        import torch

        if self.device == "cpu":
            return False
        ok = torch.cuda.is_available()
        if self.device == "cuda" and not ok:
            raise RuntimeError(f"--device cuda but torch {torch.__version__} sees no CUDA GPU")
        return ok


# ------------------------------------------------------------------------------------------------- machine


def machine_info() -> dict:
    """GPU name, memory, driver (nvidia-smi and torch), library versions, CPU, platform."""
    from importlib import metadata

    info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "machine": platform.machine()}
    try:
        with open("/proc/meminfo") as f:
            info["host_memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = q.stdout.strip() if q.returncode == 0 else f"exit {q.returncode}: {q.stderr.strip()[:200]}"
    except (OSError, subprocess.SubprocessError) as e:
        info["nvidia_smi"] = f"not available ({type(e).__name__})"
    versions = {}
    for name in ("numpy", "torch", "torchvision", "numba", "numba-cuda", "cupy-cuda13x", "cupy-cuda12x", "onnxruntime",
                 "onnxruntime-gpu", "onnx", "onnxscript", "tensorrt", "zarr", "numcodecs", "pandas", "pyarrow", "scipy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    info["versions"] = versions
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        info["torch_cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                           "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
                           "count": torch.cuda.device_count()}
    except Exception as e:  # noqa: BLE001
        info["torch_error"] = f"{type(e).__name__}: {e}"[:300]
    try:
        from numba import config as nconfig
        from numba import cuda

        info["numba_cuda_available"] = bool(cuda.is_available())
        info["numba_cudasim"] = bool(nconfig.ENABLE_CUDASIM)
    except Exception as e:  # noqa: BLE001
        info["numba_error"] = f"{type(e).__name__}: {e}"[:300]
    try:
        import onnxruntime as ort

        info["onnxruntime_providers"] = list(ort.get_available_providers())
    except Exception as e:  # noqa: BLE001
        info["onnxruntime_error"] = f"{type(e).__name__}: {e}"[:300]
    return info


# ------------------------------------------------------------------------------------------------- 1 kernels


def _numba_mode(ctx: Ctx) -> str:
    """"gpu", "simulator", or raise Skip naming why the CUDA kernels cannot run."""
    try:
        from numba import config as nconfig
        from numba import cuda
    except ImportError as e:
        raise Skip(f"numba is not importable ({e})") from None
    if nconfig.ENABLE_CUDASIM:
        return "simulator"
    if ctx.device == "cpu":
        raise Skip("--device cpu and NUMBA_ENABLE_CUDASIM is not set: the CUDA kernels need a GPU or the simulator")
    if not cuda.is_available():
        if ctx.device == "cuda":
            raise RuntimeError("--device cuda but numba.cuda.is_available() is false")
        raise Skip("no CUDA GPU (numba.cuda.is_available() is false) and NUMBA_ENABLE_CUDASIM is not set")
    return "gpu"


def _rows(n: int, d: int, dtype: str, seed: int, gpu: bool):
    """n x d rows, mean >> sd in some columns (the shift matters), made on the GPU when there is one (fast)."""
    import numpy as np

    if gpu:
        import torch

        g = torch.Generator(device="cuda").manual_seed(seed)
        tdt = torch.float32 if dtype == "float32" else torch.float64
        loc = torch.randn(d, generator=g, device="cuda", dtype=tdt) * 50
        sd = torch.rand(d, generator=g, device="cuda", dtype=tdt) * 2 + 0.5
        out = torch.empty((n, d), dtype=tdt, device="cpu", pin_memory=False)
        step = 131_072
        for i in range(0, n, step):
            m = min(step, n - i)
            out[i:i + m] = (torch.randn(m, d, generator=g, device="cuda", dtype=tdt) * sd + loc).cpu()
        return out.numpy()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * rng.uniform(0.5, 2.5, d) + rng.normal(0, 50, d)
    return x.astype(dtype)


def _diff(a, b, step: int = 65_536) -> tuple[float, float]:
    """(max |a - b|, that / max |b|) over row blocks (bounded temporaries on 1M x 1,280 float64)."""
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.ndim < 2:
        a, b = a.reshape(1, -1), b.reshape(1, -1)
    dmax = bmax = 0.0
    for i in range(0, len(a), step):
        bb = b[i:i + step].astype(np.float64, copy=False)
        dmax = max(dmax, float(np.abs(a[i:i + step] - bb).max(initial=0.0)))
        bmax = max(bmax, float(np.abs(bb).max(initial=0.0)))
    return dmax, dmax / max(bmax, 1e-300)


def _rel(a, b) -> float:
    return _diff(a, b)[1]


def check_kernels(ctx: Ctx) -> dict:
    import numpy as np

    mode = _numba_mode(ctx)
    from phenovec.process.kernel_loader import load_kernel

    s = ctx.sizes
    cov, wh = load_kernel("covariance"), load_kernel("whiten")
    gpu = mode == "gpu"
    n, d, chunk, tile = s["kern_rows"], s["kern_dim"], s["kern_chunk"], s["kern_tile"]
    res = started({"mode": mode, "rows": n, "dim": d, "chunk_rows": chunk, "tile": tile, "parts": {}})
    parts = res["parts"]
    sync = None
    if gpu:
        from numba import cuda

        sync = cuda.synchronize
        wx = np.random.default_rng(0).standard_normal((512, 64))
        for xx in (wx, wx.astype(np.float32)):  # compile before timing: the kernels specialise on the input dtype
            cov.accumulate([xx], 64, device="cuda", tile=tile)
            wh.whiten_cuda(xx, None, None, np.eye(64), tile=tile)
    tol = 1e-9  # float64 accumulation on both paths: only the summation order differs
    rng = np.random.default_rng(1)
    w = rng.standard_normal((d, d)) / np.sqrt(d)

    def one_dtype(dtype):
        x = _rows(n, d, dtype, seed=3, gpu=gpu)
        chunks = [x[i:i + chunk] for i in range(0, n, chunk)]
        (cn, cmean, cm2), t_cpu = timed(cov.accumulate, chunks, d, device="cpu")
        (gn, gmean, gm2), t_gpu = timed(cov.accumulate, chunks, d, device="cuda", tile=tile, sync=sync)
        m2_abs, m2_rel = _diff(gm2, cm2)
        out = {"cov_n_equal": int(cn) == int(gn), "cov_mean_rel": _rel(gmean, cmean), "cov_m2_rel": m2_rel,
               "cov_m2_abs": m2_abs, "cov_cpu_s": round(t_cpu, 3), "cov_cuda_s": round(t_gpu, 3)}
        mean, scale = cmean, np.sqrt(np.diag(cm2) / (cn - 1))
        o_cpu, t_wc = timed(wh.whiten_cpu, x, mean, scale, w, chunk_rows=chunk)
        o_gpu, t_wg = timed(wh.whiten_cuda, x, mean, scale, w, chunk_rows=chunk, tile=tile, sync=sync)
        w_abs, w_rel = _diff(o_gpu, o_cpu)
        out.update({"whiten_rel": w_rel, "whiten_abs": w_abs, "whiten_cpu_s": round(t_wc, 3),
                    "whiten_cuda_s": round(t_wg, 3)})
        del o_cpu, o_gpu
        if gpu:
            try:
                out["bound"] = _cupy_bound(x, t_gpu)
            except Exception as e:  # noqa: BLE001 - the bound is a reference: its failure is recorded, not the kernels'
                out["bound"] = {"status": "FAIL", "reason": f"{type(e).__name__}: {e}"[:300], "traceback": trace_tail(e)}
        else:
            out["bound"] = {"status": "SKIP", "reason": "the Numba CUDA simulator: no GPU to time against CuPy"}
        worst = max(out["cov_mean_rel"], out["cov_m2_rel"], out["whiten_rel"])
        out.update(verdict(out["cov_n_equal"] and worst <= tol, f"CUDA = CPU to {worst:.1e} relative (<= {tol:g})",
                           f"CUDA differs from CPU by {worst:.3e} relative (> {tol:g})"))
        return out

    for dtype in ("float32", "float64"):
        run_part(parts, dtype, one_dtype, dtype)

    def spherizer():
        from phenovec.process.spherize import Spherizer

        m, k = s["kern_sph_rows"], s["kern_sph_dim"]
        x = _rows(m, k, "float32", seed=5, gpu=gpu)
        chunks = [x[i:i + chunk] for i in range(0, m, chunk)]
        c, t_c = timed(lambda: Spherizer("ZCA-cor", device="cpu").fit_stream(chunks))
        g, t_g = timed(lambda: Spherizer("ZCA-cor", device="cuda").fit_stream(chunks), sync=sync)
        tc, t_tc = timed(c.transform, x)
        tg, t_tg = timed(g.transform, x, sync=sync)
        rel = _rel(np.asarray(tg), np.asarray(tc))
        out = {"rows": m, "dim": k, "method": "ZCA-cor", "transform_rel": rel, "fit_cpu_s": round(t_c, 3),
               "fit_cuda_s": round(t_g, 3), "transform_cpu_s": round(t_tc, 3), "transform_cuda_s": round(t_tg, 3)}
        out.update(verdict(rel <= 1e-7, f"Spherizer cuda = cpu to {rel:.1e} relative",
                           f"Spherizer cuda differs from cpu by {rel:.3e} relative (> 1e-7)"))
        return out

    run_part(parts, "spherizer", spherizer)
    res["status"], res["reason"] = combine(parts)
    res["reason"] = f"[{mode}] " + res["reason"]
    return res


def _cupy_bound(x, t_numba: float) -> dict:
    """CuPy's ``X.T @ X`` on the same rows (cuBLAS GEMM): with and without the host->device copy."""
    try:
        import cupy as cp
    except Exception as e:  # noqa: BLE001
        return {"status": "SKIP", "reason": f"CuPy is not importable ({type(e).__name__}: {e})"[:300]}
    out = {}
    best_h2d, best_gemm = float("inf"), float("inf")
    for _ in range(3):
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        dx = cp.asarray(x)
        cp.cuda.Device().synchronize()
        t1 = time.perf_counter()
        dx.T @ dx
        cp.cuda.Device().synchronize()
        t2 = time.perf_counter()
        best_h2d, best_gemm = min(best_h2d, t1 - t0), min(best_gemm, t2 - t1)
        del dx
    cp.get_default_memory_pool().free_all_blocks()
    out.update({"status": "PASS", "reason": "timed", "cupy_h2d_s": round(best_h2d, 4), "cupy_gemm_s": round(best_gemm, 4),
                "numba_cov_s": round(t_numba, 4),
                "numba_over_gemm": round(t_numba / best_gemm, 2),
                "numba_over_h2d_plus_gemm": round(t_numba / (best_h2d + best_gemm), 2),
                "note": "numba_cov_s is the whole accumulate (host->device copies, column sums, Gram kernel, "
                        "Chan merge); the bound is cuBLAS GEMM (X.T @ X, full matrix) on the same dtype"})
    return out


# ------------------------------------------------------------------------------------------------- 2 train


def _synthetic_images(n, channels, side, classes, device, seed):
    """Images whose class shows in a smooth per-class pattern under unit noise; labels cycle through the classes."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    base = torch.randn(classes, channels, 4, 4, generator=g, device=device)
    patterns = torch.nn.functional.interpolate(base, size=(side, side), mode="bilinear", align_corners=False)
    y = torch.arange(n, device=device) % classes
    x = patterns[y] * 1.5 + torch.randn(n, channels, side, side, generator=g, device=device)
    return x.contiguous(), y


def _train_mode(ctx: Ctx, dev, mode: str, x, y) -> dict:
    """``steps`` SGD steps of the trainer's model in one precision mode; loss trajectory and images/s."""
    import math

    import torch

    from phenovec.train.models import build_model
    from phenovec.train.schedule import build_optimizer

    s = ctx.sizes
    torch.manual_seed(0)
    model = build_model(s["train_arch"], x.shape[1], s["train_classes"]).to(dev)
    opt = build_optimizer(model, "sgd", lr=0.05, weight_decay=1e-4, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[mode]
    scaler = torch.amp.GradScaler(dev.type) if mode == "fp16" else None
    steps, batch, warm = s["train_steps"], s["train_batch"], s["train_warmup"]
    if mode == "fp32" and not ctx.quick:
        steps = min(steps, 60)  # the reference speed only
    g = torch.Generator(device=dev).manual_seed(1)
    losses = []
    model.train()
    t0 = None
    for i in range(steps + warm):
        if i == warm:
            sync_torch()
            t0 = time.perf_counter()
        idx = torch.randint(0, len(x), (batch,), generator=g, device=dev)
        xb, yb = x[idx], y[idx]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(model(xb), yb)
        if scaler is None:
            loss.backward()
            opt.step()
        else:  # the loop's AMP step (phenovec.train.loop)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        losses.append(loss.detach())
    sync_torch()
    seconds = time.perf_counter() - t0
    vals = [float(v) for v in torch.stack(losses).cpu()]
    k = max(2, min(10, len(vals) // 4))
    first, last = sum(vals[:k]) / k, sum(vals[-k:]) / k
    finite = all(math.isfinite(v) for v in vals)
    falling = finite and last < 0.8 * first
    out = {"arch": s["train_arch"], "batch": batch, "side": x.shape[-1], "steps_timed": steps, "device": str(dev),
           "loss_first": round(first, 4), "loss_last": round(last, 4), "finite": finite, "falling": falling,
           "images_per_s": round(steps * batch / seconds, 1), "seconds": round(seconds, 2),
           "grad_scaler": scaler is not None, "final_scale": float(scaler.get_scale()) if scaler is not None else None}
    out.update(verdict(falling, f"loss {first:.3f} -> {last:.3f}, {out['images_per_s']:.0f} images/s",
                       f"loss not finite and falling ({first:.3f} -> {last:.3f}, finite={finite})"))
    return out


def _train_loop(ctx: Ctx, dev) -> dict:
    """The real loop (``phenovec.train.train``) over a synthetic crop store: needs zarr (the store's format)."""
    try:
        import zarr  # noqa: F401
    except ImportError as e:
        raise Skip(f"zarr is not importable ({e}): phenovec.train.train() reads its crops from a Zarr store; "
                   "carry the zarr wheels (bench/GPU.md) to run the real loop") from None
    import math

    from phenovec.ingest.crop import crop_index
    from phenovec.ingest.index import read_image_index
    from phenovec.ingest.synth import CHANNELS, synth_plate
    from phenovec.train import train

    s = ctx.sizes
    root = ctx.work / "train_loop"
    crops = root / "crops"
    if not (crops / "manifest.json").exists():
        big = not ctx.quick
        p = synth_plate(root, plates=2 if big else 1, wells=24 if big else 8, sites_per_well=1,
                        size=512 if big else 160, cells_per_site=(60, 80) if big else (14, 18), seed=0,
                        progress=False)
        crop_index(read_image_index(p["index"], list(CHANNELS)), p["nuclei"], crops, box_size=s["loop_box"],
                   edge="shift", chunk_cells=256, progress=False)
    cfg = {"data": {"crops": str(crops), "batch_size": s["loop_batch"], "workers": 0 if ctx.quick else 4},
           "model": {"arch": s["loop_arch"]},
           "optim": {"lr": 0.02, "warmup_epochs": 0},
           "train": {"epochs": 2, "out": str(root / f"run-{dev.type}"), "seed": 0, "device": dev.type,
                     "amp": "auto", "threads": None}}
    res = train(cfg, progress=False)
    m = res.metrics
    import torch

    ck = torch.load(res.last, map_location="cpu", weights_only=True)
    losses = [float(v) for v in m["train_loss"]]
    amp_on = ck.get("scaler_state") is not None
    out = {"arch": s["loop_arch"], "box": s["loop_box"], "batch": s["loop_batch"], "device": dev.type,
           "epochs": int(res.epochs), "train_loss": losses, "cells_per_s": [round(float(v), 1) for v in m["cells_per_s"]],
           "train_cells": int(m["train_cells"].iloc[-1]), "val_accuracy": [None if v is None or v != v else float(v) for v in m["val_accuracy"]],
           "amp_grad_scaler_in_checkpoint": amp_on}
    ok = res.epochs == 2 and all(math.isfinite(v) for v in losses) and amp_on == (dev.type == "cuda")
    out.update(verdict(ok, f"2 epochs, loss {losses[0]:.3f} -> {losses[-1]:.3f}, {out['cells_per_s'][-1]:.0f} cells/s"
                           + (", AMP on" if amp_on else ""),
                       f"epochs={res.epochs}, losses={losses}, AMP scaler saved={amp_on} on {dev.type}"))
    return out


def check_train(ctx: Ctx) -> dict:
    import torch

    gpu = ctx.torch_gpu()
    dev = torch.device("cuda" if gpu else "cpu")
    s = ctx.sizes
    res = started({"device": str(dev), "path": "model + explicit AMP step (the loop's autocast/GradScaler lines) on "
           "in-memory synthetic images; then phenovec.train.train() when zarr imports", "parts": {},
           "reference": "thesis: ~450 cells/s for EfficientNet-B0 at batch 256 on an A100 (DeepProfiler)"})
    pool = s["train_batch"] * 8
    x, y = _synthetic_images(pool, 5, s["train_side"], s["train_classes"], dev, seed=0)
    parts = res["parts"]
    for mode in ("fp16", "bf16", "fp32"):
        if mode == "fp16" and not gpu:
            parts[mode] = {"status": "SKIP", "reason": "fp16 autocast + GradScaler is the loop's CUDA path "
                                                      "(train.amp); no CUDA GPU here"}
            continue
        run_part(parts, mode, _train_mode, ctx, dev, mode, x, y)
    del x, y
    if gpu:
        torch.cuda.empty_cache()
    run_part(parts, "train_loop", _train_loop, ctx, dev)
    res["status"], res["reason"] = combine(parts)
    return res


# ------------------------------------------------------------------------------------------------- 3, 4 onnxruntime


CHANNELS5 = ["DNA", "ER", "RNA", "AGP", "Mito"]


def _exported_model(ctx: Ctx) -> Path:
    """A ProfileNet exported with phenovec.export (once per run; the ORT checks share it)."""
    path = ctx.work / f"{ctx.sizes['ort_arch']}-{ctx.sizes['ort_box']}.onnx"
    if path.exists():
        return path
    import torch

    from phenovec.export import export_onnx
    from phenovec.train.models import build_model

    torch.manual_seed(0)
    model = build_model(ctx.sizes["ort_arch"], 5, 10)
    model.eval()
    # quick: opset 17 (the TorchScript exporter, seconds); else the default (opset 18, torch.export-based)
    export_onnx(model, path, channels=CHANNELS5, crop_size=ctx.sizes["ort_box"], opset=17 if ctx.quick else 18,
                intensity={"input_scaling": "none", "crop_rescale": True})
    return path


def _crops(n, box, seed=0):
    import numpy as np

    return np.random.default_rng(seed).uniform(0, 1, (n, 5, box, box)).astype(np.float32)


def _parity(a, b) -> dict:
    import numpy as np

    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = (a64 * b64).sum(1) / np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-300)
    dmax, rel = _diff(a64, b64)
    return {"max_abs": dmax, "rel": rel, "min_row_cosine": float(cos.min())}


def _throughput(sess, batch: int, box: int, repeats: int = 3) -> dict:
    crops = _crops(batch, box, seed=9)
    sess.run(crops)  # warm-up (engine build, cuDNN autotune)
    times = []
    for _ in range(repeats):
        _, t = timed(sess.run, crops)
        times.append(t)
    t = sorted(times)[len(times) // 2]
    return {"batch": batch, "median_s": round(t, 4), "crops_per_s": round(batch / t, 1)}


def _ort_gpu_provider(ctx: Ctx, provider: str):
    """(session provider list to ask for, stand-in flag) or Skip with the plain reason."""
    import onnxruntime as ort

    avail = list(ort.get_available_providers())
    if ctx.ort_stand_in:
        return ["CPUExecutionProvider"], True
    if ctx.device == "cpu":
        raise Skip(f"--device cpu: {provider} not asked for")
    if provider not in avail:
        raise Skip(f"onnxruntime {ort.__version__} lists no {provider} (available: {avail}): the CPU build of "
                   "onnxruntime is installed, not onnxruntime-gpu" + (" / TensorRT" if "Tensorrt" in provider else ""))
    if provider == "TensorrtExecutionProvider":
        from phenovec.runtime.providers import tensorrt_importable

        if not tensorrt_importable():
            raise Skip("onnxruntime lists TensorrtExecutionProvider but the tensorrt package is not installed")
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], False
    return ["CUDAExecutionProvider", "CPUExecutionProvider"], False


def _provider_start(path, wanted: list[str]) -> dict:
    """Whether onnxruntime starts ``wanted[0]`` for this model as is, and else after ``onnxruntime.preload_dlls()``
    (onnxruntime-gpu finds pip's CUDA / cuDNN libraries, nvidia-*-cu13, only once they are preloaded: a session that
    cannot load them falls back to the CPU without an error)."""
    import onnxruntime as ort

    def first():
        return ort.InferenceSession(str(path), providers=wanted).get_providers()[0]

    out = {"wanted": wanted[0], "started_as_is": first()}
    if out["started_as_is"] != wanted[0] and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
        out["started_after_preload_dlls"] = first()
    return out


def check_ort(ctx: Ctx, provider: str) -> dict:
    import warnings

    wanted, stand_in = _ort_gpu_provider(ctx, provider)
    from phenovec.runtime.session import ProfileSession

    s = ctx.sizes
    box = s["ort_box"]
    res = started({"provider": provider, "arch": s["ort_arch"], "box": box, "parts": {},
                   "stand_in": "CPUExecutionProvider (code path only, no GPU)" if stand_in else None})
    parts = res["parts"]
    path, t_export = timed(_exported_model, ctx)
    res["export_s"] = round(t_export, 2)
    if not stand_in:
        res["provider_start"] = _provider_start(path, wanted)
    crops = _crops(s["ort_parity"], box)
    ref = ProfileSession(path, providers=["CPUExecutionProvider"], micro_batch=None).run(crops)
    trt_cache = str(ctx.work / "trt-cache")
    sessions = {}

    def open_session(precision):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sess = ProfileSession(path, providers=wanted, precision=precision, trt_cache_dir=trt_cache,
                                  micro_batch=None, io_binding=True if stand_in else None)
        sessions[precision] = sess
        return sess, [str(w.message)[:300] for w in caught]

    def parity(precision, tol_rel, tol_cos):
        sess, warned = open_session(precision)
        got, t = timed(sess.run, crops)
        out = {"providers": sess.providers, "io_binding": sess.io_binding, "precision_running": sess.precision,
               "precision_fallback": sess.precision_fallback, "warnings": warned, "first_run_s": round(t, 3),
               **_parity(got, ref)}
        first = sess.providers[0]
        on_it = first == wanted[0]
        ok = on_it and out["rel"] <= tol_rel and out["min_row_cosine"] >= tol_cos
        out.update(verdict(ok, f"{first}: rel {out['rel']:.1e}, min cosine {out['min_row_cosine']:.6f} vs CPU EP",
                           f"{first} (wanted {wanted[0]}): rel {out['rel']:.3e} (<= {tol_rel:g}?), min cosine "
                           f"{out['min_row_cosine']:.6f} (>= {tol_cos}?)"))
        return out

    # TF32 convolutions on the CUDA EP (its default) give ~1e-3 relative; fp16 ~1e-2
    run_part(parts, "fp32_parity", parity, "fp32", 2e-2, 0.999)

    def device_binding():
        import onnxruntime as ort

        sess = sessions.get("fp32")
        if sess is None:
            raise Skip("no fp32 session (fp32_parity failed)")
        dev = "cpu" if stand_in else "cuda"
        inner = sess.session
        binding = inner.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(crops, dev, 0)
        binding.bind_ortvalue_input("crops", value)
        binding.bind_output("features", dev)
        inner.run_with_iobinding(binding)
        got = binding.copy_outputs_to_cpu()[0]
        same = sess.run(crops)
        out = {"input_on": dev, **_parity(got, same)}
        out.update(verdict(out["rel"] <= 1e-5, f"input bound on {dev}: same features as session.run "
                                               f"(rel {out['rel']:.1e})", f"rel {out['rel']:.3e} vs session.run"))
        return out

    run_part(parts, "device_io_binding", device_binding)

    def fp16():
        out = parity("fp16", 5e-2, 0.99)
        if provider == "CUDAExecutionProvider" and not stand_in:
            out["note"] = ("phenovec's runtime runs fp16 on TensorRT only; on the CUDA EP precision='fp16' falls back "
                           "to float32 with a RuntimeWarning (session.precision_fallback)")
        return out

    run_part(parts, "fp16", fp16)

    def throughput():
        out = {}
        for precision in ("fp32", "fp16"):
            sess = sessions.get(precision)
            if sess is None or sess.precision != precision and precision != "fp32":
                out[precision] = "not run (session not opened or fell back to fp32)"
                continue
            out[precision] = [_throughput(sess, b, box) for b in s["ort_batches"]]
        out["status"], out["reason"] = "PASS", "timed"
        return out

    run_part(parts, "throughput", throughput)
    res["status"], res["reason"] = combine(parts)
    if stand_in:
        res["reason"] = "[stand-in: CPU EP] " + res["reason"]
    return res


# ------------------------------------------------------------------------------------------------- 5 eval


def check_eval(ctx: Ctx) -> dict:
    import numpy as np

    from phenovec.benchmark.eval_data import COMPOUND, make_profiles
    from phenovec.evaluate.average_precision import average_precision
    from phenovec.evaluate.precision import cpu_has_bf16

    gpu = ctx.torch_gpu()
    dev = "cuda" if gpu else "torch-cpu"
    s = ctx.sizes
    res = started({"device": dev, "n": s["eval_n"], "dim": s["eval_dim"], "parts": {},
                   "rules": "replicate retrieval: pos_sameby=[Metadata_Compound], neg_diffby=[Metadata_Compound]"})
    if not gpu:
        res["note"] = "no CUDA GPU: the torch backend's code on PyTorch's CPU device (device='torch-cpu')"
    parts = res["parts"]
    rules = dict(pos_sameby=[COMPOUND], pos_diffby=[], neg_sameby=[], neg_diffby=[COMPOUND])
    meta, x, _ = make_profiles(s["eval_n"], s["eval_dim"], seed=0)

    def ap_of(xx, mm, **kw):
        return average_precision(mm, xx, progress_bar=False, **rules, **kw)["average_precision"].to_numpy()

    if gpu:  # CUDA context and kernels before timing
        m = min(len(x), 2000)
        try:
            ap_of(x[:m], meta.iloc[:m].reset_index(drop=True), device=dev)
        except Exception as e:  # noqa: BLE001 - the parts below report it
            res["warmup_error"] = f"{type(e).__name__}: {e}"[:300]
    cpu32 = {}

    def fp32():
        a_cpu, t_cpu = timed(ap_of, x, meta)
        a_dev, t_dev = timed(ap_of, x, meta, device=dev, sync=sync_torch)
        cpu32["ap"] = a_cpu
        d = np.abs(a_dev - a_cpu)
        nan_same = bool(np.array_equal(np.isnan(a_dev), np.isnan(a_cpu)))
        mx = float(np.nanmax(d))
        out = {"max_abs_dap": mx, "mean_abs_dap": float(np.nanmean(d)), "nan_pattern_equal": nan_same,
               "cpu_s": round(t_cpu, 3), "device_s": round(t_dev, 3), "speedup": round(t_cpu / t_dev, 2),
               "queries": int(np.isfinite(a_cpu).sum())}
        out.update(verdict(nan_same and mx <= 0.05, f"max |dAP| {mx:.1e} (float32 similarities), "
                                                    f"{t_cpu:.2f} s CPU vs {t_dev:.2f} s {dev}",
                           f"max |dAP| {mx:.3e} > 0.05 or NaN pattern differs ({nan_same})"))
        return out

    run_part(parts, "float32", fp32)

    def fp64():
        m = s["eval_n64"]
        x64, mm = x[:m].astype(np.float64), meta.iloc[:m].reset_index(drop=True)
        a_cpu, t_cpu = timed(ap_of, x64, mm)
        a_dev, t_dev = timed(ap_of, x64, mm, device=dev, sync=sync_torch)
        mx = float(np.nanmax(np.abs(a_dev - a_cpu)))
        out = {"n": m, "max_abs_dap": mx, "cpu_s": round(t_cpu, 3), "device_s": round(t_dev, 3)}
        out.update(verdict(mx <= 1e-10, f"float64: max |dAP| {mx:.1e}", f"float64: max |dAP| {mx:.3e} > 1e-10"))
        return out

    run_part(parts, "float64", fp64)

    def spearman():
        # exact integer rank dot products and one shared scaling (evaluate/backend.py): the device's similarities are
        # the CPU's bits, so even ties="exact" must give the same AP
        m = s["eval_n64"]
        x64, mm = x[:m].astype(np.float64), meta.iloc[:m].reset_index(drop=True)
        a_cpu, t_cpu = timed(ap_of, x64, mm, distance="spearman", ties="exact")
        a_dev, t_dev = timed(ap_of, x64, mm, distance="spearman", ties="exact", device=dev, sync=sync_torch)
        same = bool(np.array_equal(a_cpu, a_dev, equal_nan=True))
        mx = float(np.nanmax(np.abs(a_dev - a_cpu)))
        out = {"n": m, "bit_identical": same, "max_abs_dap": mx, "cpu_s": round(t_cpu, 3), "device_s": round(t_dev, 3)}
        out.update(verdict(same, "spearman, ties='exact': AP bit-identical to the CPU's",
                           f"spearman, ties='exact': AP differs from the CPU's (max |dAP| {mx:.3e})"))
        return out

    run_part(parts, "spearman", spearman)

    def reduced():
        if "ap" not in cpu32:
            raise Skip("no float32 CPU reference (float32 part failed)")
        out = {}
        for precision in ("tf32", "bf16", "fp16"):
            kw = {"device": dev, "precision": precision}
            # without a GPU: bf16 natively where the CPU has AVX512-BF16 or AMX, every other precision emulated
            if not gpu and (precision != "bf16" or not cpu_has_bf16()):
                kw = {"device": "cpu", "precision": precision, "emulate": True}
            try:
                a, t = timed(ap_of, x, meta, sync=sync_torch, **kw)
            except Exception as e:  # noqa: BLE001 - a precision the device cannot run is a finding, not a crash
                out[precision] = {"error": f"{type(e).__name__}: {e}"[:300]}
                continue
            d = np.abs(a - cpu32["ap"])
            out[precision] = {"max_abs_dap": float(np.nanmax(d)), "mean_abs_dap": float(np.nanmean(d)),
                              "seconds": round(t, 3), "how": f"{kw['device']}" + (" emulated" if kw.get("emulate") else "")}
        ok = all("max_abs_dap" in v and v["max_abs_dap"] < 0.2 for v in out.values())
        out.update(verdict(ok, "reduced precisions ran; |dAP| vs exact fp32 recorded",
                           "a reduced precision failed or moved an AP by >= 0.2"))
        return out

    run_part(parts, "reduced_precision", reduced)
    res["status"], res["reason"] = combine(parts)
    return res


# ------------------------------------------------------------------------------------------------- 6 harmony


def _harmony_data(n, d, seed=0):
    sys.path.insert(0, str(BENCH))
    from harmony_bench import synthetic

    return synthetic(n, d, seed=seed)


def check_harmony(ctx: Ctx) -> dict:
    import numpy as np

    from phenovec.batch.harmony import run_harmony

    gpu = ctx.torch_gpu()
    dev = "cuda" if gpu else "cpu"
    s = ctx.sizes
    vars_use = ["Metadata_Plate", "Metadata_Row", "Metadata_Source"]
    x, meta = _harmony_data(s["harmony_n"], s["harmony_d"], seed=0)
    wx, wmeta = _harmony_data(300 if ctx.quick else 2000, s["harmony_d"], seed=1)
    run_harmony(wx, wmeta, vars_use)  # Numba compile / cache load
    run_harmony(wx, wmeta, vars_use, device=dev)  # CUDA context, kernels
    exact, t_cpu = timed(run_harmony, x, meta, vars_use)
    dev_res, t_dev = timed(run_harmony, x, meta, vars_use, device=dev, sync=sync_torch)
    zc, zd = exact.Z_corr, dev_res.Z_corr
    rel = float(np.abs(zd - zc).max() / np.abs(zc).max())
    it_c, it_d = len(exact.objective_harmony), len(dev_res.objective_harmony)
    res = {"device": dev, "cells": s["harmony_n"], "pcs": s["harmony_d"], "vars_use": vars_use,
           "max_rel_dz": rel, "finite": bool(np.isfinite(zd).all()), "iterations_exact": it_c,
           "iterations_device": it_d, "exact_s": round(t_cpu, 3), "device_s": round(t_dev, 3),
           "speedup": round(t_cpu / t_dev, 2)}
    if not gpu:
        res["note"] = "no CUDA GPU: the torch path on PyTorch's CPU device"
    # the tests' bound for the torch path (other float rounding than the exact kernels); iterations are reported
    ok = res["finite"] and rel <= 1e-3
    res.update(verdict(ok, f"Z_corr within {rel:.1e} relative of the exact path, {it_d} iterations (exact {it_c}), "
                           f"{t_cpu:.2f} s exact vs {t_dev:.2f} s {dev} ({res['speedup']}x)",
                       f"max rel dZ {rel:.3e} (> 1e-3) or not finite; iterations {it_d} vs {it_c}"))
    return res


# ------------------------------------------------------------------------------------------------- 7 auto


def check_auto(ctx: Ctx) -> dict:
    import numpy as np
    import torch

    from phenovec.batch.harmony import run_harmony
    from phenovec.evaluate.backend import resolve_device as eval_device
    from phenovec.process.kernel_loader import cuda_available, resolve_device
    from phenovec.runtime.providers import choose_providers
    from phenovec.train.loop import device_from_name

    from numba import config as nconfig

    torch_cuda = torch.cuda.is_available()
    sim = bool(nconfig.ENABLE_CUDASIM)
    import onnxruntime as ort

    listed = list(ort.get_available_providers())
    picks = {"kernels": resolve_device("auto"), "runtime_providers": choose_providers("auto"),
             "trainer": str(device_from_name("auto")), "evaluate": eval_device("auto")}
    x, meta = _harmony_data(ctx.sizes["auto_n"], 8, seed=2)
    vars_use = ["Metadata_Plate"]
    a = run_harmony(x, meta, vars_use, nclust=8, device="auto")
    e = run_harmony(x, meta, vars_use, nclust=8)
    picks["harmony"] = "exact CPU kernels (device=None)" if np.array_equal(a.Z_corr, e.Z_corr) else "torch device"
    seen = {"torch.cuda.is_available": torch_cuda, "numba.cuda.is_available": cuda_available(),
            "numba_cudasim": sim, "onnxruntime_providers": listed}
    want = {"kernels": "cuda" if cuda_available() else "cpu",
            "trainer": "cuda" if torch_cuda else "cpu", "evaluate": "cuda" if torch_cuda else "cpu",
            "harmony": "torch device" if torch_cuda else "exact CPU kernels (device=None)"}
    bad = [f"{k}: picked {picks[k]!r}, expected {v!r}" for k, v in want.items() if picks[k] != v]
    gpu_eps = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in listed]
    if gpu_eps and picks["runtime_providers"][0] not in gpu_eps:
        bad.append(f"runtime: {gpu_eps} listed but {picks['runtime_providers'][0]} picked first")
    if picks["runtime_providers"][-1] != "CPUExecutionProvider":
        bad.append("runtime: CPUExecutionProvider is not the last fallback")
    notes = []
    if sim:
        notes.append("NUMBA_ENABLE_CUDASIM=1: kernel_loader's 'auto' picks the simulator as 'cuda'")
    if torch_cuda and not gpu_eps:
        notes.append("a GPU is present but onnxruntime is the CPU build: profiling's 'auto' runs on the CPU")
    res = {"picks": picks, "seen": seen, "expected": want, "notes": notes}
    res.update(verdict(not bad, "auto picks match the hardware: " + ", ".join(f"{k}={v}" for k, v in picks.items()
                                                                               if k != "runtime_providers")
                       + f", runtime={picks['runtime_providers']}", "; ".join(bad)))
    return res


# ------------------------------------------------------------------------------------------------- driver


def run_check(name: str, ctx: Ctx) -> dict:
    ensure_phenovec()
    fns = {"kernels": check_kernels, "train": check_train, "eval": check_eval, "harmony": check_harmony,
           "auto": check_auto, "ort_cuda": lambda c: check_ort(c, "CUDAExecutionProvider"),
           "ort_tensorrt": lambda c: check_ort(c, "TensorrtExecutionProvider")}
    t0 = time.perf_counter()
    try:
        res = fns[name](ctx)
    except Skip as s:
        res = {"status": "SKIP", "reason": str(s)}
    except Exception as e:  # noqa: BLE001
        res = {"status": "FAIL", "reason": f"{type(e).__name__}: {e}"[:500], "traceback": trace_tail(e)}
    res["wall_s"] = round(time.perf_counter() - t0, 2)
    return res


def child_main(args) -> int:
    ctx = Ctx(args)
    PARTIAL["path"] = args.result
    if args.hang == args.child:  # test hook: a check that hangs, with a grandchild holding the output pipe
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        time.sleep(600)
    out = {"check": run_check(args.child, ctx)}
    if args.machine:
        try:
            out["machine"] = machine_info()
        except Exception as e:  # noqa: BLE001
            out["machine"] = {"error": trace_tail(e)}
    tmp = Path(args.result + ".tmp")
    tmp.write_text(json.dumps(out, indent=1, default=str))
    os.replace(tmp, args.result)
    return 0


def _child_args(args, name: str, result: Path, machine: bool) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--result", str(result),
           "--work", args.work, "--device", args.device]
    if args.quick:
        cmd.append("--quick")
    if args.ort_stand_in:
        cmd.append("--ort-stand-in")
    if machine:
        cmd.append("--machine")
    if args.hang:
        cmd += ["--hang", args.hang]
    return cmd


def run_child(cmd: list[str], limit: float, env: dict) -> tuple[str, int | None, bool]:
    """Run one check's process in its own process group: (its output, exit status or None, timed out). At the limit
    (or if this process is interrupted) the whole group is killed, DataLoader workers included, so that no
    grandchild keeps the pipes open or the GPU busy."""
    import signal

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(REPO),
                            env=env, process_group=0)
    try:
        out, _ = proc.communicate(timeout=limit)
        return out, proc.returncode, False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return out or "", None, True
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def child_env(quick: bool) -> dict:
    """The children's environment: with --quick, one BLAS / OpenMP (torch) / Numba thread unless the caller set them
    (on a shared 2-core machine torch's default threads ran EfficientNet steps ~50x slower than one thread)."""
    env = dict(os.environ)
    if quick:
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env.setdefault(k, "1")
    return env


def write_json_atomic(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a CPU machine, the test)")
    ap.add_argument("--out", default=None, help="folder for gpu_check.json and gpu_check.log")
    ap.add_argument("--check", action="append", choices=CHECKS, help="run only this check (repeatable)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="auto: the GPU when there is one; cpu: CPU devices only; cuda: a missing GPU is a failure")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-clock budget of the whole run (default 300 s; quick 240 s); a check left without "
                         "time is SKIPped")
    ap.add_argument("--ort-stand-in", action="store_true",
                    help="run the onnxruntime checks' code on the CPU execution provider (tests the script, not a GPU)")
    ap.add_argument("--child", choices=CHECKS, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--machine", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--hang", choices=CHECKS, help=argparse.SUPPRESS)  # test hook: this check hangs (6 s limit)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args)

    started = time.time()
    budget = args.budget_s if args.budget_s is not None else (240.0 if args.quick else 300.0)
    deadline = time.monotonic() + budget
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(args.check or CHECKS))
    doc = {"script": "bench/gpu_check.py", "argv": sys.argv[1:] if argv is None else list(argv), "quick": args.quick,
           "device": args.device, "ort_stand_in": args.ort_stand_in,
           "numba_enable_cudasim": os.environ.get("NUMBA_ENABLE_CUDASIM", ""),
           "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "budget_s": budget,
           "machine": None, "checks": {}}
    log_lines = []
    with tempfile.TemporaryDirectory(prefix="phenovec-gpu-check-") as work:
        args.work = work
        for i, name in enumerate(names):
            left = deadline - time.monotonic()
            own = LIMITS[name][1 if args.quick else 0] if args.hang != name else 6.0
            limit = min(own, left - 3)
            if limit < min(10.0, own):
                res = {"status": "SKIP", "reason": f"the run's time budget ({budget:.0f} s) was used up"}
            else:
                result = Path(work) / f"{name}.json"
                cmd = _child_args(args, name, result, machine=doc["machine"] is None)
                t0 = time.monotonic()
                out_text, rc, timed_out = run_child(cmd, limit, child_env(args.quick))  # stdout and stderr
                wall = time.monotonic() - t0
                log_lines.append(f"===== {name} (rc={rc}, {wall:.1f} s)\n{out_text}")
                got = json.loads(result.read_text()) if result.exists() else None
                if got is not None and got["check"].get("status") != "RUNNING":
                    res = got["check"]
                    if got.get("machine") is not None:
                        doc["machine"] = got["machine"]
                elif timed_out or got is not None:
                    why = f"timed out after {limit:.0f} s (the check's limit)" if timed_out else \
                        f"the check's process ended with exit status {rc} before finishing"
                    res = {**(got["check"] if got is not None else {}), "status": "FAIL", "reason": why,
                           "process_output_tail": out_text[-TRACE_CHARS:]}
                else:
                    res = {"status": "FAIL", "reason": f"the check's process ended with exit status {rc} and no result",
                           "process_output_tail": out_text[-TRACE_CHARS:]}
                res["process_wall_s"] = round(wall, 2)
            doc["checks"][name] = res
            print(f"{res['status']} {name}: {res.get('reason', '')}", flush=True)
            doc["wall_s"] = round(time.time() - started, 2)
            if out_dir is not None:  # after every check: a run cut short still leaves what it had
                write_json_atomic(out_dir / "gpu_check.json", doc)
    if doc["machine"] is None:
        try:
            doc["machine"] = machine_info()
        except Exception as e:  # noqa: BLE001
            doc["machine"] = {"error": trace_tail(e)}
    counts = {k: sum(1 for r in doc["checks"].values() if r["status"] == k) for k in ("PASS", "FAIL", "SKIP")}
    doc["summary"] = counts
    doc["wall_s"] = round(time.time() - started, 2)
    m = doc["machine"] or {}
    gpu = (m.get("gpu") or {}).get("name") or "no CUDA GPU"
    print(f"gpu_check: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP in {doc['wall_s']:.0f} s "
          f"on {gpu}", flush=True)
    if out_dir is not None:
        write_json_atomic(out_dir / "gpu_check.json", doc)
        (out_dir / "gpu_check.log").write_text("\n".join(log_lines))
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
