"""Isolated label score (``isolated_labels``): how well labels present in the fewest batches stay separate.

Definition: scib-metrics 0.6.1's ``isolated_labels`` (its ASW form, not scib's F1 one). A label is isolated
when the number of distinct batches it occurs in is at most ``iso_threshold`` (default: the smallest such
number over all labels). Score = mean over isolated labels of the mean rescaled label silhouette
``(s_i + 1) / 2`` of their rows, ``s_i`` the silhouette of every row against all labels (the same samples as
:func:`silhouette_label`; the benchmark computes them once for both).
"""
from __future__ import annotations

import numpy as np

from phenovec.evaluate.integration.annotations import annotation_codes, embedding_matrix
from phenovec.evaluate.integration.silhouette import silhouette_samples


def isolated_label_codes(label_codes: np.ndarray, batch_codes: np.ndarray, iso_threshold: int | None = None) -> np.ndarray:
    """Codes of the labels seen in at most ``iso_threshold`` batches (default: the minimum over labels)."""
    pairs = np.unique(np.stack([label_codes, batch_codes], axis=1), axis=0)
    per_label = np.bincount(pairs[:, 0], minlength=int(label_codes.max()) + 1)
    present = np.flatnonzero(per_label > 0)
    thr = per_label[present].min() if iso_threshold is None else iso_threshold
    return present[per_label[present] <= thr]


def isolated_labels_from_samples(samples: np.ndarray, label_codes: np.ndarray, batch_codes: np.ndarray,
                                 rescale: bool = True, iso_threshold: int | None = None) -> float:
    """The score from precomputed label silhouettes (``silhouette_samples(X, labels)``)."""
    s = (samples + 1) / 2 if rescale else samples
    iso = isolated_label_codes(label_codes, batch_codes, iso_threshold)
    if len(iso) == 0:
        return float("nan")
    return float(np.mean([s[label_codes == c].mean() for c in iso]))


def isolated_labels(X, labels, batch, rescale: bool = True, iso_threshold: int | None = None) -> float:
    """Mean rescaled label silhouette of the isolated labels (scib-metrics' ``isolated_labels``)."""
    x = embedding_matrix(X)
    lab = annotation_codes(labels, "labels", x.shape[0])[0]
    bat = annotation_codes(batch, "batch", x.shape[0])[0]
    return isolated_labels_from_samples(silhouette_samples(x, lab), lab, bat, rescale, iso_threshold)
