"""Similarity of wells to reference embeddings (MOA-level MLEs, compound-level CLEs).

Same metrics and definitions as :mod:`phenovec.evaluate.similarity` (the Rust core): ``cosine``, ``pearson``
(``correlation``), ``spearman`` (Pearson on per-row average ranks) and ``euclidean`` (negative distance).
:func:`similarity_to` computes every well against a few references with the core (references x all rows,
so the cost is references x wells, not wells^2); :func:`paired_similarity` compares row i of one matrix with
row i of another (e.g. a well with its own leave-one-out MLE), in numpy with the same definitions.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from phenovec import _core
from phenovec.evaluate.similarity import as_features, check_metric


def similarity_to(x: np.ndarray, refs: np.ndarray, metric: str) -> np.ndarray:
    """``out[i, r]`` = similarity of row i of ``x`` to reference r."""
    metric = check_metric(metric)
    x = np.ascontiguousarray(x, dtype=np.float64)
    refs = np.ascontiguousarray(refs, dtype=np.float64)
    _core.check_features(x, metric)  # errors name the row of x
    try:
        _core.check_features(refs, metric)
    except ValueError as e:
        raise ValueError(f"reference embeddings (medians): {e}") from None
    stack = np.vstack([refs, x])
    r = len(refs)
    block = _core.similarity_block(stack, metric, np.arange(r, dtype=np.int64))
    return np.ascontiguousarray(block[:, r:].T)


def _unit_rows(x: np.ndarray, metric: str) -> np.ndarray:
    if metric == "spearman":
        x = rankdata(x, axis=1)
    if metric in ("pearson", "spearman"):
        x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    bad = np.flatnonzero(norm[:, 0] == 0)
    if len(bad):
        raise ValueError(f"row {int(bad[0])} has zero {'variance' if metric != 'cosine' else 'norm'}: "
                         f"its {metric} similarity is undefined")
    return x / norm


def paired_similarity(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """``out[i]`` = similarity of ``a[i]`` and ``b[i]``."""
    metric = check_metric(metric)
    a, b = as_features(a).astype(np.float64), as_features(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_similarity: shapes differ {a.shape} vs {b.shape}")
    for m in (a, b):
        if not np.isfinite(m).all():
            raise ValueError(f"row {int(np.flatnonzero(~np.isfinite(m).all(axis=1))[0])} has a non-finite value")
    if metric == "euclidean":
        return -np.linalg.norm(a - b, axis=1)
    return np.einsum("ij,ij->i", _unit_rows(a, metric), _unit_rows(b, metric))
