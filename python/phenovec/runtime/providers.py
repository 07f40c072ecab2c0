"""Execution-provider choice for onnxruntime: TensorRT, then CUDA, then CPU.

``providers="auto"`` keeps, in that order, the providers that ``onnxruntime.get_available_providers()`` lists:
TensorRT only when the ``tensorrt`` Python package also imports (the TensorRT EP needs its libraries; the
``gpu`` extra installs ``onnxruntime-gpu`` and ``tensorrt``), CUDA when listed, and always CPU last as the
fallback for nodes the others do not take. An explicit list is used in its order; a name that onnxruntime does
not list is an error naming it and the available ones.

TensorRT options: the engine cache (``trt_engine_cache_enable``, ``trt_engine_cache_path``; also the timing
cache) when ``trt_cache_dir`` is given, ``trt_fp16_enable`` when ``fp16``, and one optimisation profile covering
batch 1..``max_batch`` (``trt_profile_min/opt/max_shapes``) so a dynamic batch builds one engine, not one per
batch size. Only the CPU path has run in phenovec's tests; the TensorRT and CUDA option lists are checked as data.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Sequence

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ORDER = (TENSORRT, CUDA, CPU)


def tensorrt_importable() -> bool:
    """Whether the ``tensorrt`` package is installed (checked without importing its libraries)."""
    return importlib.util.find_spec("tensorrt") is not None


def tensorrt_options(*, fp16: bool, cache_dir: str | os.PathLike | None, input_name: str,
                     sample_shape: Sequence[int], max_batch: int, opt_batch: int) -> dict:
    """TensorRT EP provider options (all values strings, as onnxruntime's Python API accepts)."""
    tail = "x".join(str(int(v)) for v in sample_shape)
    opts = {
        "trt_fp16_enable": "True" if fp16 else "False",
        "trt_profile_min_shapes": f"{input_name}:1x{tail}",
        "trt_profile_opt_shapes": f"{input_name}:{int(opt_batch)}x{tail}",
        "trt_profile_max_shapes": f"{input_name}:{int(max_batch)}x{tail}",
    }
    if cache_dir is not None:
        os.makedirs(cache_dir, exist_ok=True)
        opts.update({"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache_dir),
                     "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache_dir)})
    return opts


def select_providers(providers: str | Sequence[str], available: Sequence[str], *, tensorrt_ok: bool) -> list[str]:
    """The provider names to request, in priority order (module docstring)."""
    available = list(available)
    if isinstance(providers, str):
        if providers != "auto":
            raise ValueError(f"providers must be 'auto' or a list of onnxruntime provider names, got {providers!r}")
        chosen = [p for p in ORDER if p in available and (p != TENSORRT or tensorrt_ok)]
        if CPU not in chosen:
            chosen.append(CPU)  # onnxruntime always has it; a stub listing would not
        return chosen
    chosen = [str(p) for p in providers]
    if not chosen:
        raise ValueError("providers list is empty")
    for p in chosen:
        if p not in available:
            raise ValueError(f"provider {p!r} is not available in this onnxruntime (available: {available})")
    if TENSORRT in chosen and not tensorrt_ok:
        raise ValueError(f"provider {TENSORRT!r} requested but the 'tensorrt' package does not import "
                         "(install the gpu extra: onnxruntime-gpu and tensorrt)")
    return chosen
