"""Average silhouette width: ``silhouette_samples``, ``silhouette_label``, ``silhouette_batch``.

Definitions are scib-metrics 0.6.1's (``scib_metrics.metrics._silhouette``, ``utils._silhouette``), which
follow scikit-learn's ``silhouette_samples``: ``a_i`` = mean distance to the other members of its class,
``b_i`` = smallest mean distance to another class, ``s_i = (b_i - a_i) / max(a_i, b_i)``, 0 where undefined
(a singleton class, a single class). Distances: ``euclidean`` (default) or ``cosine`` (``1 - cos``, clipped
to [0, 2]).

- ``silhouette_label`` = mean ``s_i`` with labels, rescaled ``(s + 1) / 2`` (higher = labels better separated);
- ``silhouette_batch``: within each label with 2 <= #batches < #rows, ``s_i`` with batches as classes,
  ``1 - |s_i|`` (rescaled), averaged per label, then over labels (higher = batches better mixed).
  ``between_cluster_distances`` = ``nearest`` (standard), ``mean_other`` or ``furthest`` (scib-metrics'
  BRAS variants, :func:`bras`).

How: rows are sorted by class once, so each row's per-class distance sums are sums over contiguous column
ranges, accumulated tile by tile by :func:`~phenovec.evaluate.integration.distance_pass.distance_pass`
(``|x|^2 + |y|^2 - 2 x.y`` on centred rows, in the input's float type, self distance exactly 0). scib-metrics computes every distance directly in
JAX float32; results agree to float rounding (tests: 1e-6). The one regime where they part: float32 rows whose
within-class distances are tiny beside their distance from the centre (tight classes far apart), where the
expansion cancels in float32 (measured: a row's s_i off by 2e-4, silhouette_label by 4e-5, while a direct float32
difference is off by 7e-8). Pass float64 rows there: the pass then runs in float64.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from phenovec.evaluate.integration.annotations import annotation_codes, embedding_matrix, label_codes
from phenovec.evaluate.integration.distance_pass import BETWEEN, TILE, distance_pass
from phenovec.evaluate.integration.threads import threads_for
from phenovec.evaluate.integration.undefined import UndefinedMetricError


def silhouette_samples(X, labels, chunk_size: int = 256, metric: Literal["euclidean", "cosine"] = "euclidean",
                       between_cluster_distances: Literal["nearest", "mean_other", "furthest"] = "nearest",
                       *, tile: int = TILE) -> np.ndarray:
    """Silhouette of every row against the classes of ``labels`` (``chunk_size`` is scib's; ignored here)."""
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    if between_cluster_distances not in BETWEEN:
        raise ValueError(f"between_cluster_distances must be one of {', '.join(BETWEEN)}, "
                         f"got {between_cluster_distances!r}")
    x = embedding_matrix(X)
    order, sc, freqs, bounds, xs, norms = sorted_by_label(x, labels, metric)
    p = distance_pass(xs, norms, codes=sc, bounds=bounds, between=between_cluster_distances,
                      cosine=metric == "cosine", tile=tile)
    return silhouettes_from_sums(p.intra, p.inter, freqs, sc, order)


def sorted_by_label(x: np.ndarray, labels, metric: str = "euclidean"):
    """``(order, sorted codes, class sizes, class bounds, rows sorted by class, their squared norms)``; rows are
    centred (euclidean) or scaled to unit norm (cosine) in their float type."""
    n = x.shape[0]
    codes = label_codes(labels, "labels", n)
    order = np.argsort(codes, kind="stable")
    sc = codes[order]
    freqs = np.bincount(sc)
    bounds = np.concatenate([[0], np.cumsum(freqs)]).astype(np.int64)
    xs = x[order]
    if metric == "cosine":
        nrm = np.sqrt(np.einsum("ij,ij->i", xs, xs, dtype=np.float64))
        if (nrm == 0).any():
            raise ValueError(f"X: row {int(order[np.flatnonzero(nrm == 0)[0]])} has zero norm (cosine distance "
                             f"undefined)")
        xs = (xs / nrm[:, None]).astype(x.dtype)
    else:
        xs = (xs - xs.mean(axis=0, dtype=np.float64)).astype(x.dtype)
    norms = np.einsum("ij,ij->i", xs, xs, dtype=np.float64)
    return order, sc, freqs, bounds, xs, norms


def silhouettes_from_sums(intra, inter, freqs, sc, order) -> np.ndarray:
    """Silhouettes in input row order from the per-row own-class distance sums and nearest-class mean distances."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = intra / (freqs[sc] - 1)
        sil = (inter - a) / np.maximum(a, inter)
    out = np.empty(len(sil))
    out[order] = np.nan_to_num(sil)
    return out


def silhouette_label(X, labels, rescale: bool = True, chunk_size: int = 256,
                     metric: Literal["euclidean", "cosine"] = "euclidean") -> float:
    """Label ASW: mean silhouette of the labels, rescaled to [0, 1] by ``(s + 1) / 2``."""
    return _label_asw(silhouette_samples(X, labels, metric=metric), rescale)


def _label_asw(samples: np.ndarray, rescale: bool) -> float:
    asw = float(np.mean(samples))
    return (asw + 1) / 2 if rescale else asw


def silhouette_batch(X, labels, batch, rescale: bool = True, chunk_size: int = 256,
                     metric: Literal["euclidean", "cosine"] = "euclidean",
                     between_cluster_distances: Literal["nearest", "mean_other", "furthest"] = "nearest") -> float:
    """Batch ASW within labels: mean over labels of the mean ``1 - |s_i|`` (batches as classes)."""
    x = embedding_matrix(X)
    n = x.shape[0]
    lab, lab_levels = annotation_codes(labels, "labels", n)
    bat = annotation_codes(batch, "batch", n)[0]
    means = []
    for g in range(len(lab_levels)):
        rows = np.flatnonzero(lab == g)
        nb = len(np.unique(bat[rows]))
        if nb == 1 or nb == len(rows):
            continue
        with threads_for(len(rows)):
            s = np.abs(silhouette_samples(x[rows], bat[rows], metric=metric,
                                          between_cluster_distances=between_cluster_distances))
        if rescale:
            s = 1 - s
        means.append(s.mean())
    if not means:
        raise UndefinedMetricError("silhouette_batch: no label has rows from at least 2 batches (and fewer batches "
                                   "than rows); batch mixing within labels is undefined")
    return float(np.mean(means))


def bras(X, labels, batch, chunk_size: int = 256, metric: Literal["euclidean", "cosine"] = "cosine",
         between_cluster_distances: Literal["mean_other", "furthest"] = "mean_other") -> float:
    """Batch removal adapted silhouette (scib-metrics' ``bras``: cosine, mean distance to the other batches)."""
    return silhouette_batch(X, labels, batch, True, chunk_size, metric, between_cluster_distances)
