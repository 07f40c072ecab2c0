"""The error a metric raises when its definition does not apply to the rows it is given (``silhouette_batch`` with
no label spanning two batches, ``pcr_comparison`` against a constant covariate, ``clisi_knn`` with one label), as
opposed to bad input: :func:`~phenovec.evaluate.integration.benchmark.integration_table` with
``skip_undefined=True`` leaves such a metric blank and says why, and lets every other error through."""
from __future__ import annotations


class UndefinedMetricError(ValueError):
    """A metric undefined for these rows (a ``ValueError``, so callers catching that still do)."""
