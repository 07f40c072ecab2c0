"""Batch correction, beside the process steps it resembles: Harmony (harmonypy 2.1.0's numbers, faster),
Symphony's mapping of new profiles onto a Harmony run and its per-cell mapping metric (symphonypy 0.2.4's numbers),
EFAAR's TVN (PCA on controls + per-batch CORAL) and the JUMP profiling recipe's corrections, each as a function on
arrays and as a profile-table step (``phenovec.batch.steps``) with ``Metadata_*`` columns kept and a saved,
re-appliable fit where the step has one.
"""
from __future__ import annotations

from phenovec.lazy_exports import lazy_exports

_EXPORTS = {
    "run_harmony": "harmony", "Harmony": "harmony", "HarmonyWarning": "harmony",
    "harmony_initial_centroids": "harmony", "BatchFit": "fit_record",
    "HarmonyReference": "symphony", "SymphonyMapping": "symphony", "ClusterSpread": "mapping_confidence",
    "harmony": "steps", "tvn": "steps", "subtract_well_mean": "steps", "regress_cell_count": "steps",
    "remove_outliers": "steps", "rank_int": "steps", "pca": "steps", "sphere_by_map": "steps",
    "arm_correction": "steps",
}
#: the profile-table steps (``phenovec.batch.steps``), as recipe steps and ``phenovec process batch`` name them
STEPS = ("harmony", "tvn", "subtract_well_mean", "regress_cell_count", "remove_outliers", "rank_int", "pca",
         "sphere_by_map", "arm_correction")
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
