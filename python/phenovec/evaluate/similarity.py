"""Similarity between profiles, computed in blocks by the Rust core.

Metrics: ``cosine``, ``pearson`` (alias ``correlation``, copairs' name), ``spearman`` (Pearson on
per-row average ranks; exact integer rank dot products, then one scaling, so exactly tied pairs tie on
every CPU) and ``euclidean`` (the *negative* distance, so larger is more similar; any ranking metric
gives the same result as copairs' 1/(1+d)). Rows with non-finite values, zero norm
(cosine) or zero variance (pearson/spearman) are refused with the row number.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from phenovec import _core
from phenovec.evaluate.pairs import DEFAULT_BLOCK_BYTES, block_rows_for
from phenovec.io.profiles import Profiles, split_profiles

METRICS = ("cosine", "pearson", "correlation", "spearman", "euclidean")


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown similarity metric {metric!r}: use one of {', '.join(METRICS)}")
    return "pearson" if metric == "correlation" else metric


def as_profiles(meta, feats=None, features: Sequence[str] | None = None, meta_features: Sequence[str] | None = None,
                dtype=None) -> Profiles:
    """Accept copairs' (meta, feats) or a whole profile table (feats=None)."""
    if feats is None:
        return split_profiles(meta, features=features, meta=meta_features, dtype=dtype)
    if hasattr(feats, "to_numpy"):
        feats = feats.to_numpy()
    return split_profiles(meta, feats=np.asarray(feats), features=features, meta=meta_features, dtype=dtype)


def as_features(feats) -> np.ndarray:
    x = np.asarray(feats.to_numpy() if hasattr(feats, "to_numpy") else feats)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D matrix, got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise ValueError(f"features must be numeric, got dtype {x.dtype}")
        x = x.astype(np.float64)
    return np.ascontiguousarray(x)


def similarity_matrix(feats, metric: str = "cosine", rows: Sequence[int] | None = None) -> np.ndarray:
    """Similarities of ``rows`` (default: all, the full N x N matrix) against every row."""
    x = as_features(feats)
    metric = check_metric(metric)
    r = np.arange(len(x), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    return _core.similarity_block(x, metric, r)


def iter_similarity_blocks(feats, metric: str = "cosine", block_bytes: int = DEFAULT_BLOCK_BYTES,
                           rows: Sequence[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(row_indices, block)`` with ``block[k] = similarities of row_indices[k] to all rows``.

    Only one block of about ``block_bytes`` exists at a time (the caller should not keep them).
    """
    x = as_features(feats)
    metric = check_metric(metric)
    _core.check_features(x, metric)
    all_rows = np.arange(len(x), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    step = block_rows_for(len(x), x.itemsize, block_bytes)
    prepared = _core.Prepared(x, metric)  # rows prepared once, not on every block (same values bit for bit)
    for s in range(0, len(all_rows), step):
        r = all_rows[s : s + step]
        yield r, prepared.block(r)
