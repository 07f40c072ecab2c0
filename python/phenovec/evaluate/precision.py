"""Reduced-precision similarity GEMMs: which precision can run where, and how its inputs are rounded.

``precision`` names the arithmetic of the similarity GEMM only; the rows are prepared (normalised, centred,
ranked) in float32 or better and the rank comparisons are made on float32 keys (or the float type of the
similarities with ``ties="exact"``):

- ``"fp32"`` (default): the exact path, the GEMM in the input's float type (float32, or float64 for float64
  input); on the CPU it is the Rust core, unchanged.
- ``"bf16"``: GEMM inputs rounded to bfloat16 (8-bit significand), products accumulated in float32. On the CPU
  through oneDNN (PyTorch's ``mkldnn.matmul.fp32_precision = "bf16"``: AMX / AVX512-BF16), refused on a CPU
  where PyTorch does not run it (no AVX512-BF16 or AMX; or, probed, AVX512-BF16 without AMX, as AMD Zen 4, where
  PyTorch 2.15 keeps the GEMM in float32); on CUDA a bf16 GEMM with float32 output.
- ``"fp16"``: inputs rounded to float16 (11-bit significand), float32 accumulation: CUDA only.
- ``"tf32"``: inputs rounded to TensorFloat-32 (11-bit significand, float32 range): CUDA compute capability
  >= 8.0 only.

``emulate=True`` runs any precision anywhere by rounding the prepared rows to it (round to nearest even, as the
hardware converts) and multiplying in float32: the same values as the hardware path up to the order of the
float32 sums, without its speed. It exists to measure the effect of a precision on a machine that lacks it.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

PRECISIONS = ("fp32", "bf16", "fp16", "tf32")


def check_precision_name(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def _bf16_units() -> tuple[bool, bool]:
    """(AVX512-BF16, AMX tiles) as PyTorch detects them ((False, False) without torch or oneDNN)."""
    try:
        import torch
    except ImportError:
        return False, False
    if not torch.backends.mkldnn.is_available():
        return False, False
    cpu = torch.cpu
    return tuple(bool(p is not None and p()) for p in (getattr(cpu, "_is_avx512_bf16_supported", None),
                                                       getattr(cpu, "_is_amx_tile_supported", None)))


@functools.lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """Whether PyTorch runs float32 GEMMs with bf16 inputs on this CPU when asked (``matmul_mode("bf16")``): it has
    AVX512-BF16 or AMX, and a probe product whose float32 and bf16 values differ comes back in bf16. PyTorch 2.15
    honours the request on AMX CPUs (Sapphire Rapids) but not on an AVX512-BF16 CPU without AMX (AMD Zen 4), where
    the GEMM silently stays float32. Probed once per process, at the first call."""
    if not any(_bf16_units()):
        return False
    import torch

    a = torch.full((32, 64), 1.0 + 2.0**-12)  # 1 + 2^-12 rounds to 1 in bf16
    try:
        with matmul_mode("bf16", "cpu"):
            v = float((a @ torch.ones(64, 32))[0, 0])
    except ValueError:  # a PyTorch without the oneDNN bf16 setting (< 2.9)
        return False
    return v == 64.0


def check_precision(precision: str, device: str, emulate: bool = False) -> None:
    """Raise a ValueError saying why ``precision`` cannot run on ``device`` ("cpu", "torch-cpu", "cuda[:k]")."""
    check_precision_name(precision)
    if precision == "fp32" or emulate:
        return
    if not device.startswith("cuda"):
        if precision == "bf16":
            if not cpu_has_bf16():
                why = ("PyTorch runs its float32 GEMMs in float32 here all the same (this CPU has AVX512-BF16 "
                       "without AMX)" if any(_bf16_units()) else "it has neither AVX512-BF16 nor AMX (as PyTorch "
                       "detects them)")
                raise ValueError(f"precision='bf16' cannot run on this CPU: {why}; use precision='fp32', a CUDA "
                                 "device, or emulate=True to measure the effect of bf16 without its speed")
            return
        raise ValueError(f"precision={precision!r} cannot run on the CPU (a CUDA tensor-core format; PyTorch has no "
                         f"CPU GEMM with {precision} inputs and float32 accumulation): use 'fp32' or 'bf16' on the "
                         f"CPU, device='cuda', or emulate=True to measure its effect without its speed")
    import torch

    index = torch.device(device).index or 0
    major, minor = torch.cuda.get_device_capability(index)
    name = torch.cuda.get_device_name(index)
    if precision == "tf32" and major < 8:
        raise ValueError(f"precision='tf32' needs CUDA compute capability >= 8.0; {name} has {major}.{minor}")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision='bf16' is not supported by {name} (compute capability {major}.{minor})")


def round_to(z: np.ndarray, precision: str) -> np.ndarray:
    """float32 copy of ``z`` with every value rounded to ``precision`` (round to nearest, ties to even)."""
    z = np.ascontiguousarray(z, dtype=np.float32)
    if precision == "fp32":
        return z.copy()
    if precision == "fp16":
        return z.astype(np.float16).astype(np.float32)
    drop = {"bf16": 16, "tf32": 13}[check_precision_name(precision)]  # float32 has 23 significand bits
    bits = z.view(np.uint32).astype(np.uint64)
    half = np.uint64(1 << (drop - 1))
    lsb = (bits >> np.uint64(drop)) & np.uint64(1)
    rounded = ((bits + half - np.uint64(1) + lsb) >> np.uint64(drop)) << np.uint64(drop)
    return (rounded & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.float32)


#: the per-backend float32 matmul settings of PyTorch >= 2.9 (``torch.backends.<backend>.matmul.fp32_precision``)
#: that :func:`float32_matmul_flags` sets and restores: cuBLAS's (TF32 tensor cores) and oneDNN's (bf16 / TF32 on
#: CPUs with AMX). cuDNN's (convolutions, RNNs) are left alone: none of phenovec's torch paths calls them.
_MATMUL_BACKENDS = ("cuda", "mkldnn")


def _matmul_backend(torch, name: str):
    return getattr(getattr(torch.backends, name), "matmul", None)


@contextlib.contextmanager
def float32_matmul_flags(cuda: str = "ieee", cpu: str = "ieee"):
    """PyTorch's float32 matmuls in ``cuda`` ("ieee" or "tf32") on CUDA and ``cpu`` ("ieee" or "bf16") on the CPU
    while the block runs, whatever the caller set (``torch.set_float32_matmul_precision("high")``,
    ``torch.backends.cuda.matmul.allow_tf32 = True`` or the per-backend ``fp32_precision``); the caller's settings
    are restored afterwards, also on an error.

    PyTorch >= 2.9 keeps two records that it cross-checks (the legacy matmul precision, and a per-backend one that
    it reads): both are set consistently here, the legacy one through ``set_float32_matmul_precision``, then each
    backend's explicitly ("ieee", not "none", which inherits from ``torch.backends.fp32_precision``); restoring goes
    in the same order, so a caller's state reads back as it was (a caller that mixed the two APIs, so that
    ``get_float32_matmul_precision`` raises, gets its per-backend settings back). Older PyTorch has only
    ``set_float32_matmul_precision`` and ``allow_tf32``: CPU bf16 then raises ValueError."""
    import torch

    legacy_of = {("ieee", "ieee"): "highest", ("tf32", "ieee"): "high"}
    backends = {name: _matmul_backend(torch, name) for name in _MATMUL_BACKENDS}
    new_api = all(b is not None and hasattr(b, "fp32_precision") for b in backends.values())
    if not new_api and cpu != "ieee":
        raise ValueError(f"precision={cpu!r} on the CPU needs PyTorch's torch.backends.mkldnn.matmul.fp32_precision "
                         f"(PyTorch >= 2.9; this is {torch.__version__})")
    try:
        old_legacy = torch.get_float32_matmul_precision()
    except RuntimeError:  # the caller mixed the legacy and per-backend APIs: only the latter can be read back
        old_legacy = None
    old = {name: b.fp32_precision for name, b in backends.items()} if new_api else {}
    old_tf32 = None if new_api else torch.backends.cuda.matmul.allow_tf32
    try:
        torch.set_float32_matmul_precision(legacy_of.get((cuda, cpu), "highest"))
        if new_api:
            backends["cuda"].fp32_precision = cuda
            backends["mkldnn"].fp32_precision = cpu
        else:
            torch.backends.cuda.matmul.allow_tf32 = cuda == "tf32"
        yield
    finally:
        if old_legacy is not None:
            torch.set_float32_matmul_precision(old_legacy)
        for name, value in old.items():
            backends[name].fp32_precision = value
        if old_tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = old_tf32


@contextlib.contextmanager
def matmul_mode(precision: str, device: str, emulate: bool = False):
    """PyTorch's float32 matmul settings for one GEMM in ``precision`` (restored afterwards;
    :func:`float32_matmul_flags`).

    fp32 and emulated precisions force IEEE float32 (no TF32 / bf16 shortcuts); CPU bf16 asks oneDNN for bf16
    inputs with float32 accumulation; CUDA tf32 allows TF32 tensor cores.
    """
    cpu_mode = "bf16" if (precision == "bf16" and not emulate and not device.startswith("cuda")) else "ieee"
    cuda_mode = "tf32" if (precision == "tf32" and not emulate and device.startswith("cuda")) else "ieee"
    with float32_matmul_flags(cuda_mode, cpu_mode):
        yield
