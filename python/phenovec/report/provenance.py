"""Run provenance for the report: package versions, platform, input file hash, the caller's dict.

Versions come from the installed distributions' metadata (``importlib.metadata``), so optional
packages (torch, onnxruntime) are reported when installed without being imported (the evaluation
layer must not import torch; see docs/architecture.md).
"""
from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from phenovec.io.digest import file_sha256

PACKAGES = ("numpy", "pandas", "scipy", "scikit-learn", "pyarrow", "matplotlib", "torch", "onnxruntime")


def package_versions() -> dict:
    """``{name: version or None}`` for phenovec and :data:`PACKAGES` (None: not installed)."""
    import phenovec

    out = {"phenovec": phenovec.__version__}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def collect_provenance(source, given: dict | None, timings: dict) -> dict:
    """Versions, platform, UTC time, the input (path and SHA-256 when a file), timings and ``given``."""
    if given is not None and not isinstance(given, dict):
        raise TypeError(f"provenance must be a dict, got {type(given).__name__}")
    inp = {"source": str(source)}
    if isinstance(source, (str, Path)) and Path(source).is_file():
        inp["sha256"] = file_sha256(source)
    return {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": package_versions(),
        "input": inp,
        "report_timings_s": timings,
        "run": given or {},
    }
