"""Profile processing with pycytominer's names and numbers: collate, aggregate, annotate, normalize, feature_select,
spherize, consensus, and recipes that chain them. Switching from pycytominer is a change of import::

    from phenovec.process import aggregate, normalize, feature_select, consensus

Additions: ``by=`` (fit per plate or any grouping in one call), saved and re-applied fits, streaming
(``aggregate_stream``, ``normalize_stream``, ``Spherizer.fit_stream``) over Parquet / CSV / Zarr inputs larger
than memory, and Numba kernels (CUDA with a CPU path) for spherize.
"""
from __future__ import annotations

# Functions are bound eagerly: a submodule of the same name (phenovec.process.normalize) would otherwise
# shadow the function once imported.
from phenovec.process.aggregate import aggregate, aggregate_stream
from phenovec.process.annotate import annotate
from phenovec.process.collate import collate
from phenovec.process.columns import infer_cp_features
from phenovec.process.consensus import consensus
from phenovec.process.feature_select import feature_select
from phenovec.process.normalize import NormalizeFit, normalize, normalize_stream
from phenovec.process.recipe import Recipe, apply_recipe
from phenovec.process.source import open_source
from phenovec.process.spherize import SpherizeFit, Spherizer, spherize

__all__ = [
    "aggregate", "aggregate_stream", "annotate", "collate", "normalize", "normalize_stream", "NormalizeFit",
    "feature_select", "spherize", "Spherizer", "SpherizeFit", "consensus", "Recipe", "apply_recipe",
    "open_source", "infer_cp_features",
]
