"""Profile processing with pycytominer's names and numbers: aggregate, normalize, feature_select, spherize,
consensus, and recipes that chain them. Switching from pycytominer is a change of import::

    from phenovec.process import aggregate, normalize, feature_select, consensus

Additions: ``by=`` (fit per plate or any grouping in one call), saved and re-applied fits, streaming
(``aggregate_stream``, ``normalize_stream``, ``Spherizer.fit_stream``) over Parquet / CSV / Zarr inputs larger
than memory, and Numba kernels (CUDA with a CPU path) for spherize.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "aggregate": "aggregate",
    "aggregate_stream": "aggregate",
    "annotate": "annotate",
    "normalize": "normalize",
    "normalize_stream": "normalize",
    "NormalizeFit": "normalize",
    "feature_select": "feature_select",
    "spherize": "spherize",
    "Spherizer": "spherize",
    "SpherizeFit": "spherize",
    "consensus": "consensus",
    "Recipe": "recipe",
    "apply_recipe": "recipe",
    "open_source": "source",
    "infer_cp_features": "columns",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"phenovec.process.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'phenovec.process' has no attribute {name!r}")
