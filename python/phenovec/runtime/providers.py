"""Execution-provider choice for onnxruntime: TensorRT, then CUDA, then (for bf16) OpenVINO, then CPU.

``providers="auto"`` keeps, in that order, the providers that onnxruntime lists: TensorRT only when the
``tensorrt`` Python package also imports (the TensorRT EP needs its libraries; the ``gpu`` extra installs
``onnxruntime-gpu`` and ``tensorrt``), CUDA when listed, OpenVINO only for ``precision="bf16"``, and always CPU
last as the fallback for nodes the others do not take. An explicit list is used in its order; a name that
onnxruntime does not list is an error naming it and the available ones.

OpenVINO (``onnxruntime-ep-openvino``, the ``openvino`` extra) is an onnxruntime *plugin* execution provider: its
library is registered with onnxruntime once per process (:func:`openvino_device`) and a session adds it for the
OpenVINO CPU device (``SessionOptions.add_provider_for_devices``; naming it in ``providers=`` is silently ignored by
onnxruntime). Its CPU plugin runs bfloat16 on CPUs whose OpenVINO device reports ``BF16`` (AMX or AVX512-BF16: Intel
Xeon since Sapphire Rapids; on the 2-core AMD EPYC Zen 4 VM it was tried on, the plugin listed no CPU device at all,
so bf16 is refused there): everything is asked at run time, and "not present" is an answer, never an error
(:func:`openvino_unavailable` says why). ResNet-50 at 5 x 128 x 128 on 2 Xeon cores 133 -> 650-716 crops/s,
EfficientNet-B0 568 -> 770-812 (``bench/RESULTS.md``), features within ~1e-2 relative of float32 (cosine >= 0.9999).
The precision is always set explicitly (``INFERENCE_PRECISION_HINT``, through ``load_config``): OpenVINO's own default
on such CPUs is bf16, and the EP's ``precision`` option is ignored by the plugin, so float32 must be asked for. In
float32 OpenVINO is no faster than onnxruntime's CPU provider here (EfficientNet-B0 512 vs 568 crops/s), hence it is
not in ``"auto"`` for float32.

TensorRT options: the engine cache (``trt_engine_cache_enable``, ``trt_engine_cache_path``; also the timing
cache) when ``trt_cache_dir`` is given, ``trt_fp16_enable`` when ``fp16``, and one optimisation profile covering
batch 1..``max_batch`` (``trt_profile_min/opt/max_shapes``) so a dynamic batch builds one engine, not one per
batch size. Only the CPU and OpenVINO (CPU) paths have run in phenovec's tests; the TensorRT and CUDA option lists
are checked as data.
"""
from __future__ import annotations

import importlib.util
import json
import os
import threading
from typing import Sequence

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
CPU = "CPUExecutionProvider"
ORDER = (TENSORRT, CUDA, OPENVINO, CPU)
GPU = (TENSORRT, CUDA)
#: Providers that run on the host CPU (CPU micro-batches and per-thread sessions apply to them).
HOST = (OPENVINO, CPU)
PRECISIONS = ("fp32", "fp16", "bf16")

_REGISTER_LOCK = threading.Lock()
_LIBRARY_NAME = "phenovec-openvino"
_REGISTERED = False  # this process registered the plugin library (once; onnxruntime refuses a second time)
_REGISTER_ERROR: str | None = None  # why registering failed, if it did (not retried)


def check_precision(precision) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else ``ValueError``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def tensorrt_importable() -> bool:
    """Whether the ``tensorrt`` package is installed (checked without importing its libraries)."""
    return importlib.util.find_spec("tensorrt") is not None


def openvino_installed() -> bool:
    """Whether the ``onnxruntime-ep-openvino`` plugin package is installed (checked without loading it)."""
    return importlib.util.find_spec("onnxruntime_ep_openvino") is not None


def openvino_device():
    """The OpenVINO EP's CPU device (``onnxruntime.OrtEpDevice``), or ``None`` when the plugin package is not
    installed, its library could not be registered, or it lists no CPU device (:func:`openvino_unavailable`
    says which). The plugin library is registered with onnxruntime at most once per process: onnxruntime refuses
    a second registration under the same name, so a CPU where the plugin lists no device must not try again (a
    Dask worker asking after the driver did would otherwise fail with "already registered")."""
    global _REGISTERED, _REGISTER_ERROR
    if not openvino_installed():
        return None
    import onnxruntime as ort

    with _REGISTER_LOCK:
        if not _REGISTERED and _REGISTER_ERROR is None:
            if not any(d.ep_name == OPENVINO for d in ort.get_ep_devices()):
                try:
                    import onnxruntime_ep_openvino as plugin

                    ort.register_execution_provider_library(_LIBRARY_NAME, plugin.get_library_path())
                except Exception as e:  # a broken install or an onnxruntime without plugin EPs: not present
                    _REGISTER_ERROR = f"{type(e).__name__}: {e}"
            _REGISTERED = _REGISTER_ERROR is None
        devices = [d for d in ort.get_ep_devices() if d.ep_name == OPENVINO
                   and d.ep_metadata.get("ov_device") == "CPU" and "ov_meta_device" not in d.ep_metadata]
    return devices[0] if devices else None


def openvino_unavailable() -> str | None:
    """Why OpenVINO's CPU device cannot be used in this process, or ``None`` when it can (asks at run time)."""
    if not openvino_installed():
        return "the OpenVINO plugin is not installed (the openvino extra: onnxruntime-ep-openvino)"
    if openvino_device() is not None:
        return None
    if _REGISTER_ERROR is not None:
        return f"the OpenVINO plugin could not be registered with onnxruntime ({_REGISTER_ERROR})"
    return f"the OpenVINO plugin lists no CPU device on this CPU ({cpu_model()})"


def cpu_model() -> str:
    """The host CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere), for messages."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_supports_bf16(device) -> bool:
    """Whether an OpenVINO CPU device reports bfloat16 among its ``OPTIMIZATION_CAPABILITIES`` (AMX / AVX512-BF16);
    ``False`` for ``None`` (no device)."""
    if device is None:
        return False
    return "BF16" in str(device.ep_metadata.get("OPTIMIZATION_CAPABILITIES", "")).split()


def precision_unrunnable(precision: str, providers: str | Sequence[str] = "auto") -> str | None:
    """Why this process cannot run ``precision`` with ``providers`` (asked at run time: providers listed, the
    OpenVINO device and its capabilities), or ``None`` when it can. ``fp16`` needs TensorRT among the chosen
    providers, ``bf16`` OpenVINO with a CPU device reporting ``BF16``; ``fp32`` always runs."""
    check_precision(precision)
    if precision == "fp32":
        return None
    chosen = choose_providers(providers, precision)
    if precision == "fp16":
        return None if TENSORRT in chosen else f"fp16 needs the TensorRT provider (chosen: {chosen})"
    if OPENVINO not in chosen:
        return f"bf16 needs the OpenVINO provider (chosen: {chosen}; {openvino_unavailable() or 'not chosen'})"
    device = openvino_device()
    if device is None:
        return f"bf16 needs the OpenVINO provider (chosen: {chosen}; {openvino_unavailable()})"
    if not device_supports_bf16(device):
        caps = device.ep_metadata.get("OPTIMIZATION_CAPABILITIES", "")
        return f"bf16 needs a CPU with AMX or AVX512-BF16 (OpenVINO reports {caps!r} on {cpu_model()})"
    return None


def openvino_options(*, precision: str, threads: int | None) -> dict:
    """OpenVINO EP provider options: the CPU plugin's inference precision (``bf16`` or ``f32``, always explicit),
    thread count and no CPU pinning, as the ``load_config`` JSON the plugin honours. OpenVINO pins its threads to
    cores by default, and every session of a process pins from the same first core: two 1-thread sessions (one per
    Dask thread) then share one core (EfficientNet-B0 bf16 on 2 cores: 528 crops/s pinned, 984 unpinned, medians
    of 3; one 2-thread session 884 / 887)."""
    cpu = {"INFERENCE_PRECISION_HINT": "bf16" if check_precision(precision) == "bf16" else "f32",
           "ENABLE_CPU_PINNING": "NO"}
    if threads is not None:
        cpu["INFERENCE_NUM_THREADS"] = str(int(threads))
    return {"load_config": json.dumps({"CPU": cpu}, sort_keys=True)}


def available_providers(*, openvino: bool) -> list[str]:
    """onnxruntime's available providers; with ``openvino``, after registering the OpenVINO plugin (when installed)
    so that it is listed too, and without it when it lists no CPU device."""
    import onnxruntime as ort

    no_device = openvino and openvino_device() is None  # registers the plugin first, so that it is listed
    listed = list(dict.fromkeys(ort.get_available_providers()))
    return [p for p in listed if p != OPENVINO] if no_device else listed  # no CPU device: cannot run here


def choose_providers(providers: str | Sequence[str], precision: str = "fp32") -> list[str]:
    """:func:`select_providers` over this process's available providers, with the OpenVINO plugin registered first
    when the choice may need it (``precision="bf16"``, or OpenVINO named in ``providers``)."""
    openvino = precision == "bf16" or (not isinstance(providers, str) and OPENVINO in providers)
    return select_providers(providers, available_providers(openvino=openvino), tensorrt_ok=tensorrt_importable(),
                            precision=precision)


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


def select_providers(providers: str | Sequence[str], available: Sequence[str], *, tensorrt_ok: bool,
                     precision: str = "fp32") -> list[str]:
    """The provider names to request, in priority order (module docstring)."""
    available = list(available)
    check_precision(precision)
    if isinstance(providers, str):
        if providers != "auto":
            raise ValueError(f"providers must be 'auto' or a list of onnxruntime provider names, got {providers!r}")
        chosen = [p for p in ORDER if p in available and (p != TENSORRT or tensorrt_ok)
                  and (p != OPENVINO or precision == "bf16")]
        if any(p in chosen for p in GPU) and OPENVINO in chosen:
            chosen.remove(OPENVINO)  # a GPU first: OpenVINO would only take what the GPU providers leave
        if CPU not in chosen:
            chosen.append(CPU)  # onnxruntime always has it; a stub listing would not
        return chosen
    chosen = [str(p) for p in providers]
    if not chosen:
        raise ValueError("providers list is empty")
    for p in chosen:
        if p not in available:
            hint = " (install the openvino extra: onnxruntime-ep-openvino)" if p == OPENVINO else ""
            raise ValueError(f"provider {p!r} is not available in this onnxruntime (available: {available}){hint}")
    if TENSORRT in chosen and not tensorrt_ok:
        raise ValueError(f"provider {TENSORRT!r} requested but the 'tensorrt' package does not import "
                         "(install the gpu extra: onnxruntime-gpu and tensorrt)")
    if OPENVINO in chosen and any(p not in HOST for p in chosen):
        raise ValueError(f"provider {OPENVINO!r} runs on the CPU device and combines only with {CPU!r}, "
                         f"got {chosen}")
    return chosen
