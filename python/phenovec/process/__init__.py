"""Profile processing with pycytominer's names and numbers: collate, aggregate, annotate, normalize, feature_select,
spherize, consensus, and recipes that chain them. Switching from pycytominer is a change of import::

    from phenovec.process import aggregate, normalize, feature_select, consensus

Additions: ``by=`` (fit per plate or any grouping in one call), saved and re-applied fits, streaming
(``aggregate_stream``, ``normalize_stream``, ``Spherizer.fit_stream``) over Parquet / CSV / Zarr inputs larger
than memory, and Numba kernels (CUDA with a CPU path) for spherize.
"""
from __future__ import annotations

from phenovec.lazy_exports import lazy_exports

#: public name -> the submodule defining it; bound on first use, so that ``phenovec.process.command`` (the CLI's
#: parser) imports neither pandas nor scikit-learn; ``phenovec.process.normalize`` (and the other steps) stays the
#: function, as in pycytominer, even once its submodule is imported (phenovec.lazy_exports)
_EXPORTS = {
    "aggregate": "aggregate", "aggregate_stream": "aggregate", "annotate": "annotate", "collate": "collate",
    "infer_cp_features": "columns", "consensus": "consensus", "feature_select": "feature_select",
    "NormalizeFit": "normalize", "normalize": "normalize", "normalize_stream": "normalize", "Recipe": "recipe",
    "apply_recipe": "recipe", "open_source": "source", "SpherizeFit": "spherize", "Spherizer": "spherize",
    "spherize": "spherize", "moa_profiles": "moa_profiles",
    # Harmony's drop-in for harmonypy.run_harmony (defined in phenovec.batch, beside the other batch corrections)
    "run_harmony": "phenovec.batch.harmony",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
