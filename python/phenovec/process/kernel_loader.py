"""Load the compute kernels that ship as plain files in the top-level ``kernels/`` folder.

``kernels/`` is not an importable package: the wheel carries it as files (pyproject ``include``), so an
installed phenovec has ``site-packages/kernels/*.py`` beside ``site-packages/phenovec/``, and a source
checkout has ``repo/kernels`` beside ``repo/python/phenovec``. :func:`load_kernel` imports one file by path
under the module name ``phenovec._kernels.<stem>`` (cached in ``sys.modules``).

:func:`resolve_device` turns the user's ``device="auto"|"cpu"|"cuda"`` into ``"cpu"`` or ``"cuda"``:
``auto`` picks CUDA when numba is importable and ``numba.cuda.is_available()`` is true. Numba is optional
(not a phenovec dependency): without it every kernel runs its numpy/BLAS CPU path.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import phenovec

MODULE_PREFIX = "phenovec._kernels."


def kernel_dirs() -> list[Path]:
    """Candidate kernel folders, in search order: installed wheel first, then the source tree."""
    pkg = Path(phenovec.__file__).resolve().parent
    return [pkg.parent / "kernels", pkg.parents[1] / "kernels"]


def kernel_path(stem: str) -> Path:
    """Path of ``kernels/<stem>.py``; ``FileNotFoundError`` listing where it looked if absent."""
    if not stem.isidentifier():
        raise ValueError(f"kernel name must be a Python identifier, got {stem!r}")
    tried = []
    for d in kernel_dirs():
        p = d / f"{stem}.py"
        if p.is_file():
            return p
        tried.append(str(p))
    raise FileNotFoundError(
        f"phenovec kernel {stem!r} not found; looked for " + " and ".join(tried)
        + " (the wheel must ship the top-level kernels/ folder; in a checkout it sits beside python/)"
    )


def load_kernel(stem: str) -> ModuleType:
    """Import ``kernels/<stem>.py`` as module ``phenovec._kernels.<stem>`` (once per process)."""
    name = MODULE_PREFIX + stem
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    path = kernel_path(stem)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - only for non-.py paths
        raise ImportError(f"cannot load kernel {stem!r} from {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


@functools.lru_cache(maxsize=None)
def cuda_available() -> bool:
    """True when numba is importable and ``numba.cuda.is_available()`` (a GPU and driver, or the simulator)."""
    try:
        from numba import cuda
    except Exception:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:
        return False


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` if :func:`cuda_available` else ``"cpu"``; ``"cuda"`` without CUDA raises."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda":
        if not cuda_available():
            raise RuntimeError(
                "device='cuda' was asked for but numba.cuda.is_available() is false (no numba, no GPU/driver); "
                "use device='cpu' or 'auto'"
            )
        return "cuda"
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
