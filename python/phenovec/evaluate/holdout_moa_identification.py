"""Compound-holdout MOA identification (MOAProfiler, Wong et al. 2023, Fig. 4).

Each training MOA gets an MOA-level embedding (MLE): the per-feature median of its training wells.
Every held-out compound is then identified two ways (PCC in the paper):

1. **individual vote**: each held-out well takes the MOA of its most similar MLE; the compound's
   prediction is the majority over its wells (tie: the tied MOA holding the single most similar
   well-to-MLE vote; then the first in sorted order);
2. **aggregated vote**: the compound-level embedding (CLE, median of its held-out wells) takes the MOA
   of its most similar MLE.

The score is the fraction of held-out compounds whose MOA is right; the random baseline is 1/#MOAs of
the held-out compounds (one compound right by chance; 1/59 for JUMP1, 1/215 for LINCS). Published
MOAProfiler: JUMP1 20.3-22 % of 59 compounds, LINCS 7.9-8.4 % of 215.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from phenovec import _core
from phenovec.evaluate.moa_labels import group_medians, moa_labels
from phenovec.evaluate.pairs import check_columns, encode_column
from phenovec.evaluate.reference_similarity import similarity_to
from phenovec.evaluate.similarity import as_profiles, check_metric


def _split(meta: pd.DataFrame, split_col: str, train_value, test_value) -> tuple[np.ndarray, np.ndarray]:
    check_columns(meta, [split_col], "split_col")
    encode_column(meta, split_col, "split_col")
    s = meta[split_col].to_numpy()
    train, test = s == train_value, s == test_value
    other = ~(train | test)
    if other.any():
        r = int(np.flatnonzero(other)[0])
        raise ValueError(f"split_col: column {split_col!r} has the value {s[r]!r} at row {r}, neither the training "
                         f"value {train_value!r} nor the held-out value {test_value!r}; select the rows first")
    for name, mask, v in (("training", train, train_value), ("held-out", test, test_value)):
        if not mask.any():
            raise ValueError(f"split_col: no {name} row ({split_col!r} == {v!r})")
    return train, test


def _majority(moas: np.ndarray, sims: np.ndarray) -> int:
    """Most frequent MOA code; tie: the tied MOA with the highest single similarity, then the smallest code."""
    vals, counts = np.unique(moas, return_counts=True)
    tied = vals[counts == counts.max()]
    if len(tied) == 1:
        return int(tied[0])
    best = np.array([sims[moas == t].max() for t in tied])
    return int(tied[np.flatnonzero(best == best.max())[0]])


def holdout_moa_identification(
    profiles,
    feats=None,
    features: Sequence[str] | None = None,
    meta_features: Sequence[str] | None = None,
    *,
    moa_col: str,
    compound_col: str,
    split_col: str,
    train_value="train",
    test_value="test",
    similarity_metric: str = "pearson",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Identify held-out compounds' MOAs from training MLEs; returns ``(summary, per_compound)``.

    Rows with ``split_col == train_value`` build the MLEs (every training MOA is a candidate); rows with
    ``test_value`` are the held-out wells, grouped by ``compound_col``. Any other value is an error.

    - ``summary`` (one row): ``individual_vote`` and ``aggregated_vote`` (fraction of held-out compounds right),
      ``n_correct_individual``, ``n_correct_aggregated``, ``n_compounds``, ``n_test_moas``, ``baseline``
      (1 / n_test_moas), ``n_candidate_moas``, ``n_train_wells``, ``n_test_wells``, ``similarity_metric``.
    - ``per_compound``: compound, MOA, ``n_wells``, ``individual_prediction``, ``individual_votes`` (wells for
      it), ``individual_correct``, ``aggregated_prediction``, ``aggregated_similarity``, ``aggregated_correct``.

    Errors (naming the column): missing labels or split values, fewer than two training MOAs, a compound with
    two MOAs, a held-out compound whose MOA has no training well.
    """
    metric = check_metric(similarity_metric)
    prof = as_profiles(profiles, feats, features=features, meta_features=meta_features)
    meta = prof.meta
    train, test = _split(meta, split_col, train_value, test_value)
    lab = moa_labels(meta, moa_col, compound_col, min_wells=1, what="holdout_moa_identification")
    x = np.ascontiguousarray(prof.feats, dtype=np.float64)
    _core.check_features(x, metric)  # non-finite / constant rows, named by their input row
    train_moas = np.unique(lab.moa[train])
    if len(train_moas) < 2:
        raise ValueError(f"moa_col: the training rows of {moa_col!r} have {len(train_moas)} MOA; "
                         "holdout_moa_identification needs at least 2")
    missing = np.setdiff1d(np.unique(lab.moa[test]), train_moas)
    if len(missing):
        m = int(missing[0])
        c = lab.compounds[lab.compound[test & (lab.moa == m)][0]]
        raise ValueError(f"moa_col: held-out compound {c!r} ({compound_col!r}) has MOA {lab.moas[m]!r}, which has no "
                         f"training well ({split_col!r} == {train_value!r}) and so no MLE ({len(missing)} such MOAs)")
    remap = np.full(lab.n_moas, -1, dtype=np.int64)
    remap[train_moas] = np.arange(len(train_moas))
    mle = group_medians(x[train], remap[lab.moa[train]], len(train_moas))

    test_rows = np.flatnonzero(test)
    well_sim = similarity_to(x[test_rows], mle, metric)
    well_vote = train_moas[np.argmax(well_sim, axis=1)]
    well_best = well_sim.max(axis=1)
    cpd_codes, cpd_of_test = np.unique(lab.compound[test_rows], return_inverse=True)
    cle = group_medians(x[test_rows], cpd_of_test, len(cpd_codes))
    cle_sim = similarity_to(cle, mle, metric)
    agg = train_moas[np.argmax(cle_sim, axis=1)]

    rows = []
    for k, c in enumerate(cpd_codes):
        sel = cpd_of_test == k
        truth = int(lab.moa[test_rows][sel][0])
        ind = _majority(well_vote[sel], well_best[sel])
        rows.append({
            compound_col: lab.compounds[c], moa_col: lab.moas[truth], "n_wells": int(sel.sum()),
            "individual_prediction": lab.moas[ind], "individual_votes": int((well_vote[sel] == ind).sum()),
            "individual_correct": ind == truth,
            "aggregated_prediction": lab.moas[agg[k]], "aggregated_similarity": float(cle_sim[k].max()),
            "aggregated_correct": bool(agg[k] == truth),
        })
    table = pd.DataFrame(rows)
    n_test_moas = int(pd.unique(lab.moa[test_rows]).size)
    summary = pd.DataFrame([{
        "individual_vote": float(table["individual_correct"].mean()),
        "aggregated_vote": float(table["aggregated_correct"].mean()),
        "n_correct_individual": int(table["individual_correct"].sum()),
        "n_correct_aggregated": int(table["aggregated_correct"].sum()),
        "n_compounds": len(table), "n_test_moas": n_test_moas, "baseline": 1.0 / n_test_moas,
        "n_candidate_moas": len(train_moas), "n_train_wells": int(train.sum()), "n_test_wells": len(test_rows),
        "similarity_metric": metric,
    }])
    return summary, table
