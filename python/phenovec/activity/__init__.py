"""Activity prediction with little data (the FSL-CP benchmark, thesis ch. 2): tasks from a sparse compound x assay
label table joined to compound-level profiles, reproducible few-shot episodes, learners behind one interface
(:class:`~phenovec.activity.learner.Learner`), the thesis' metrics and a paired Wilcoxon between learners.

    from phenovec.activity import build_tasks, episodes, run_benchmark

Names bind on first use: importing this package imports neither scikit-learn nor PyTorch.
"""
from __future__ import annotations

from phenovec.lazy_exports import lazy_exports

_EXPORTS = {
    "Learner": "learner", "TaskData": "learner", "check_support": "learner",
    "TaskSet": "tasks", "build_tasks": "tasks", "compound_profiles": "tasks", "split_tasks": "tasks",
    "Episode": "episodes", "episode": "episodes", "episodes": "episodes",
    "METRICS": "metrics", "score": "metrics",
    "wilcoxon_matrix": "wilcoxon", "paired_wilcoxon": "wilcoxon",
    "run_benchmark": "benchmark", "BenchmarkConfig": "benchmark", "synthetic_activity": "synthetic",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
