"""The FSL-CP thesis' per-episode metrics (ch. 2-3), from query labels and predicted P(active).

- ``auroc``: area under the ROC curve (0.5 = random);
- ``auprc``: area under the precision-recall curve as average precision (scikit-learn, as FS-Mol);
- ``dauprc``: AUPRC - positive rate of the query set (random = 0; Stanley et al.);
- ``riptop_auprc``: (AUPRC - base) / (1 - base), base = the positive rate (Heyndrickx et al.; random = 0,
  perfect = 1);
- ``f1``, ``balanced_accuracy``, ``kappa`` (Cohen's): of the predictions binarised at ``P >= 0.5``.
"""
from __future__ import annotations

import numpy as np

METRICS = ("auroc", "auprc", "dauprc", "riptop_auprc", "f1", "balanced_accuracy", "kappa")
THRESHOLD = 0.5


def score(y_true, p_active, *, where: str = "query set") -> dict[str, float]:
    """Every metric of :data:`METRICS` for one query set; ``ValueError`` naming ``where`` when the query set holds one
    class or the predictions are not finite probabilities of the right length."""
    from sklearn.metrics import (average_precision_score, balanced_accuracy_score, cohen_kappa_score, f1_score,
                                 roc_auc_score)

    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(p_active, dtype=np.float64).ravel()
    if len(p) != len(y):
        raise ValueError(f"{where}: {len(p)} predictions for {len(y)} query compounds")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"{where}: predictions must be finite probabilities in [0, 1]")
    if not np.isin(y, (0, 1)).all() or len(np.unique(y)) < 2:
        raise ValueError(f"{where}: the query labels must hold both classes 0 and 1")
    base = float(y.mean())
    auprc = float(average_precision_score(y, p))
    pred = (p >= THRESHOLD).astype(np.int64)
    kappa = float(cohen_kappa_score(y, pred))
    return {
        "auroc": float(roc_auc_score(y, p)),
        "auprc": auprc,
        "dauprc": auprc - base,
        "riptop_auprc": (auprc - base) / (1.0 - base),
        "f1": float(f1_score(y, pred, zero_division=0.0)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "kappa": kappa,
    }
