"""Sphering with its regularisation chosen by mAP, the JUMP profiling recipe's rule (``rules/sphering.smk``,
``preprocessing.sphering``):

- candidate epsilons ``10 ** numpy.random.default_rng((6, 12, 2022)).uniform(-5, 3, n)`` (``generate_log_uniform_samples``);
- for each, a sphering (``method``, the recipe's ``sphering_method``) fitted on the negative-control rows and applied
  to all rows;
- score = (mean mAP against negative controls + mean mAP against non-replicates) / 2, each the mean over
  perturbations of the mean AP of its rows (copairs' ``mean_average_precision``), with the recipe's pairs:
  *negcon*: queries are the non-control perturbations with 2..1000 replicate rows, positives the same perturbation,
  negatives the negative controls on the same plate; *nonrep*: queries and positives as before, negatives every
  other perturbation on the same plate (controls left out);
- the epsilon with the highest score is kept (``sort_values(by="score").iloc[-1]``).

AP is phenovec's engine (:func:`phenovec.evaluate.average_precision.average_precision`, copairs' semantics, cosine).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

RECIPE_SEED = (6, 12, 2022)


def epsilon_grid(n: int = 25, low: float = -5.0, high: float = 3.0, seed=RECIPE_SEED) -> np.ndarray:
    """The recipe's candidate epsilons (``generate_log_uniform_samples``)."""
    return 10.0 ** np.random.default_rng(list(seed) if isinstance(seed, tuple) else seed).uniform(low, high, size=n)


def _map_score(meta: pd.DataFrame, x: np.ndarray, index: np.ndarray, neg_diffby: list[str],
               drop_negcon: bool) -> float:
    from phenovec.evaluate.average_precision import average_precision

    ap = average_precision(meta[index].reset_index(drop=True), x[index], pos_sameby=["_pert"], pos_diffby=[],
                           neg_sameby=["_plate"], neg_diffby=neg_diffby, progress_bar=False)
    if drop_negcon:
        ap = ap[ap["_type"] != "negcon"]
    ap = ap[ap["average_precision"].notna() & (ap["n_pos_pairs"] > 0)]
    return float(ap.groupby("_pert", observed=True)["average_precision"].mean().dropna().mean())


def map_scores(x: np.ndarray, perts, plates, negcon: np.ndarray, poscon: np.ndarray | None = None) -> dict:
    """``{"negcon": ..., "nonrep": ..., "score": ...}`` for profiles ``x`` (the recipe's two mAPs and their mean)."""
    negcon = np.asarray(negcon, dtype=bool)
    poscon = np.zeros_like(negcon) if poscon is None else np.asarray(poscon, dtype=bool)
    pert = pd.Series(perts).astype(str).reset_index(drop=True)
    meta = pd.DataFrame({"_pert": pert, "_plate": pd.Series(plates).astype(str).reset_index(drop=True),
                         "_type": np.where(negcon, "negcon", np.where(poscon, "poscon", "trt"))})
    counts = pert[~poscon].value_counts()
    valid = set(counts[counts.between(2, 1000)].index)
    base = ~poscon & pert.isin(valid).to_numpy()
    # negcon: controls take unique ids (never positives of each other)
    neg_meta = meta.copy()
    neg_meta.loc[negcon, "_pert"] = [f"negcon_{i}" for i in range(int(negcon.sum()))]
    s_neg = _map_score(neg_meta, x, base | negcon, ["_type", "_pert"], drop_negcon=True)
    s_rep = _map_score(meta, x, base & ~negcon, ["_pert"], drop_negcon=False)
    return {"negcon": s_neg, "nonrep": s_rep, "score": (s_neg + s_rep) / 2}


def choose_epsilon(x: np.ndarray, perts, plates, negcon: np.ndarray, method: str = "ZCA", epsilons=None,
                   poscon: np.ndarray | None = None, names=None):
    """Sphere with every candidate epsilon, score each by mAP; returns ``(best epsilon, scores table)``. ``names``:
    the columns' names in errors (a constant feature)."""
    from phenovec.process.spherize import Spherizer

    epsilons = epsilon_grid() if epsilons is None else np.asarray(epsilons, dtype=np.float64)
    negcon = np.asarray(negcon, dtype=bool)
    if negcon.sum() < 2:
        raise ValueError(f"sphering needs at least 2 negative-control rows, got {int(negcon.sum())}")
    rows = []
    for eps in epsilons:
        sph = Spherizer(method=method, epsilon=float(eps), center=True, device="cpu")
        sph.fit(x[negcon], names=names)
        rows.append({"epsilon": float(eps), **map_scores(sph._transform_matrix(x), perts, plates, negcon, poscon)})
    table = pd.DataFrame(rows)
    best = table.sort_values(by="score").iloc[-1]
    return float(best["epsilon"]), table
