"""mAP of label retrieval (``label_map``), phenovec's bio-conservation addition to the scib set.

Arevalo et al. 2024 add mean average precision to scib's metrics. Here: every row queries the others ranked
by ``distance`` (cosine by default) with phenovec's Rust engine (:func:`phenovec.evaluate.average_precision`,
copairs' rules and tie handling); positives = same label (and, with ``across_batches=True``, a different
batch: replicate retrieval across plates), negatives = another label; AP per row, mAP per label = mean AP of
its rows with a positive, score = mean over labels. Higher = labels better retrieved. Labels with a single row
have no positive and are left out.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from phenovec.evaluate.average_precision import UnpairedError, average_precision
from phenovec.evaluate.integration.annotations import annotation_codes, embedding_matrix
from phenovec.evaluate.integration.undefined import UndefinedMetricError


def label_map(X, labels, batch=None, *, distance: str = "cosine", across_batches: bool = False) -> float:
    """Mean over labels of the mAP of retrieving same-label rows (see the module docstring)."""
    x = embedding_matrix(X)
    n = x.shape[0]
    meta = pd.DataFrame({"label": annotation_codes(labels, "labels", n)[0]})
    pos_diffby = []
    if across_batches:
        if batch is None:
            raise ValueError("label_map: across_batches=True needs the batch annotation")
        meta["batch"] = annotation_codes(batch, "batch", n)[0]
        pos_diffby = ["batch"]
    try:
        ap = average_precision(meta, x, pos_sameby=["label"], pos_diffby=pos_diffby, neg_sameby=[],
                               neg_diffby=["label"], distance=distance, progress_bar=False)
    except UnpairedError as e:  # one label, or no label with two rows: nothing to retrieve
        raise UndefinedMetricError(f"label_map: {e}") from None
    ap = ap[ap["n_pos_pairs"] > 0]
    return float(ap.groupby("label")["average_precision"].mean().mean())
