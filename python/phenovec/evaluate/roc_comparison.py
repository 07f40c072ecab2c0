"""Comparing assay-prediction runs (GapNet, Hofmarcher et al. 2019, digest part A3).

- :func:`paired_auc_test`: the paired one-sided Wilcoxon signed-rank test over per-task AUCs of two runs, H1: run
  ``a`` outperforms run ``b``. It is :func:`phenovec.activity.wilcoxon.paired_wilcoxon`: zero differences dropped,
  average ranks for ties, statistic W+ (rank sum of the positive differences), the exact null distribution for up to
  100 non-zero differences, else the tie-corrected normal approximation without continuity correction (scipy's
  ``wilcoxon(a, b, alternative="greater", method="exact" / "approx")``). Tasks without an AUC in either run are left
  out (and counted).
- :func:`wilcoxon_table`: the paper's Table A1 -- models ordered by mean AUC (best first), entry (row, column) = the
  p-value that the *column* model outperformed the *row* model; ``triangle=True`` keeps the lower triangle only
  (each worse model against each better one), as printed in the paper.
- :func:`auc_correlation`: Pearson's r of per-task AUCs of two runs (the paper's 0.72 between GapNet and FNN), with
  scipy's two-sided p-value.
- :func:`venkatraman_test`: Venkatraman's permutation test that two paired ROC curves of one task (two models'
  scores for the same compounds) are equal at every operating point, as pROC's ``roc.test(method="venkatraman")``
  for paired curves (Venkatraman & Begg 1996; Venkatraman 2000 is its unpaired form).

  *Statistic.* Rank each model's scores over the n compounds (ties by order of appearance, pROC's
  ``ties.method="first"``). At each rank cut-off k = 1..n a model misclassifies e(k) = #(actives ranked <= k) +
  #(inactives ranked > k). E = sum_k |e_a(k) - e_b(k)|: 0 when the two rankings give the same errors at every
  cut-off, larger the more their ROC curves differ.

  *Permutation.* Under H0 the two models' ranks are exchangeable within a compound: each permutation adds
  U(-0.5, 0.5) jitter to both rank vectors (breaking ties), swaps the two models' (unjittered) ranks of each
  compound with probability 1/2, re-ranks and recomputes E. p = #(E_perm >= E) / n_permutations (two-sided only,
  as pROC; 2000 permutations by default, pROC's ``boot.n``). Seeded: the same inputs and seed give the same p.

Higher scores must mean "more likely active" in both runs.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["paired_auc_test", "wilcoxon_table", "auc_correlation", "venkatraman_test", "venkatraman_per_task",
           "auc_columns"]

N_PERMUTATIONS = 2000


def auc_columns(runs: Mapping[str, pd.DataFrame] | pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Tasks x runs of ``metric``: from a mapping run name -> per-task table (``task`` and ``metric`` columns),
    tasks outer-joined by name (NaN where a run lacks the task); a DataFrame is returned as it is."""
    if isinstance(runs, pd.DataFrame):
        return runs
    cols = {}
    for name, t in runs.items():
        for c in ("task", metric):
            if c not in t.columns:
                raise ValueError(f"run {name!r}: per-task table has no column {c!r}")
        dup = t["task"].astype(str).duplicated()
        if dup.any():
            raise ValueError(f"run {name!r}: task {t['task'].astype(str)[dup].iloc[0]!r} appears twice")
        cols[str(name)] = pd.Series(t[metric].to_numpy(dtype=np.float64), index=t["task"].astype(str))
    if len(cols) < 2:
        raise ValueError(f"comparing runs needs at least two, got {len(cols)}")
    return pd.DataFrame(cols)


def _paired(a, b, what: str) -> tuple[np.ndarray, np.ndarray, int]:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"{what}: the two runs have {len(a)} and {len(b)} tasks; pass per-task values of the same "
                         "tasks in the same order")
    keep = ~np.isnan(a) & ~np.isnan(b)
    if np.isinf(a[keep]).any() or np.isinf(b[keep]).any():
        raise ValueError(f"{what}: infinite per-task value")
    return a[keep], b[keep], int((~keep).sum())


def paired_auc_test(auc_a, auc_b) -> dict:
    """One-sided paired Wilcoxon signed-rank test, H1: ``auc_a`` tends to exceed ``auc_b``: ``n_tasks`` (used),
    ``n_dropped`` (NaN in either), ``statistic`` (W+), ``p_value``, ``mean_difference``, ``wins`` / ``losses``."""
    from phenovec.activity.wilcoxon import paired_wilcoxon

    a, b, dropped = _paired(auc_a, auc_b, "paired_auc_test")
    if len(a) == 0:
        raise ValueError("paired_auc_test: no task has a value in both runs")
    w, p = paired_wilcoxon(a, b)
    return {"n_tasks": int(len(a)), "n_dropped": dropped, "statistic": w, "p_value": p,
            "mean_difference": float(np.mean(a - b)), "wins": int(np.sum(a > b)), "losses": int(np.sum(a < b))}


def wilcoxon_table(runs: Mapping[str, pd.DataFrame] | pd.DataFrame, *, triangle: bool = False,
                   metric: str = "auc") -> pd.DataFrame:
    """Table A1: p-value that the column model outperformed the row model (models by mean ``metric``, best
    first; tasks missing in either model of a pair left out of that pair; diagonal NaN)."""
    from phenovec.activity.wilcoxon import wilcoxon_matrix

    scores = auc_columns(runs, metric)
    order = scores.mean(axis=0, skipna=True).sort_values(ascending=False, kind="stable").index
    scores = scores[order]
    row_beats_col = wilcoxon_matrix(scores)
    out = row_beats_col.T.copy()  # (row, col) = p(col beats row)
    out.index.name = "row \\ column outperformed"
    out.columns = list(order)
    out.index = list(order)
    if triangle:
        out = out.where(np.tril(np.ones(out.shape, dtype=bool), k=-1))
    return out


def auc_correlation(auc_a, auc_b) -> dict:
    """Pearson's r between the per-task values of two runs (tasks with a value in both): ``r``, ``p_value``
    (two-sided), ``n_tasks``, ``n_dropped``."""
    from scipy.stats import pearsonr

    a, b, dropped = _paired(auc_a, auc_b, "auc_correlation")
    if len(a) < 3:
        raise ValueError(f"auc_correlation: needs at least 3 tasks with a value in both runs, got {len(a)}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        raise ValueError("auc_correlation: one run has the same value on every task; the correlation is undefined")
    r, p = pearsonr(a, b)
    return {"r": float(r), "p_value": float(p), "n_tasks": int(len(a)), "n_dropped": dropped}


def _first_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis of a 2-D array, ties by order of appearance (R's
    ``rank(ties.method="first")``)."""
    order = np.argsort(x, axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(1, x.shape[-1] + 1), x.shape), axis=-1)
    return ranks


def _errors(ranks: np.ndarray, active: np.ndarray) -> np.ndarray:
    """e(k), k = 1..n, per row of ``ranks`` (each a permutation of 1..n): actives ranked <= k plus inactives
    ranked > k."""
    order = np.argsort(ranks, axis=-1)  # position of the compound at rank k + 1
    act_sorted = active[order]
    cum_act = np.cumsum(act_sorted, axis=-1)
    cum_inact = np.cumsum(~act_sorted, axis=-1)
    return cum_act + (int((~active).sum()) - cum_inact)


def _statistic(r: np.ndarray, s: np.ndarray, active: np.ndarray) -> np.ndarray:
    return np.abs(_errors(s, active) - _errors(r, active)).sum(axis=-1)


def venkatraman_test(y, score_a, score_b, *, n_permutations: int = N_PERMUTATIONS, seed: int = 0,
                     chunk: int = 256) -> dict:
    """Venkatraman's paired permutation test of two ROC curves of one task (see the module docstring):
    ``statistic`` (E), ``p_value``, ``n_permutations``, ``n``, ``n_active``, ``auc_a``, ``auc_b``. ``y``: 1 / 0
    labels (measured only), ``score_a`` / ``score_b``: the two models' scores for the same compounds."""
    from phenovec.evaluate.assay_prediction import roc_auc

    y = np.asarray(y, dtype=np.float64).ravel()
    a = np.asarray(score_a, dtype=np.float64).ravel()
    b = np.asarray(score_b, dtype=np.float64).ravel()
    if not (len(y) == len(a) == len(b)):
        raise ValueError(f"venkatraman_test: {len(y)} labels, {len(a)} and {len(b)} scores; the curves must be "
                         "paired (the same compounds in the same order)")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("venkatraman_test: labels must be 1 (active) or 0 (inactive); drop unmeasured ones first")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("venkatraman_test: scores must be finite")
    active = y == 1
    if active.all() or not active.any():
        raise ValueError(f"venkatraman_test: needs both classes ({int(active.sum())} active, "
                         f"{int((~active).sum())} inactive)")
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) or n_permutations < 1:
        raise ValueError(f"n_permutations must be a positive integer, got {n_permutations!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    n = len(y)
    r = _first_ranks(a[None, :])[0]
    s = _first_ranks(b[None, :])[0]
    e = float(_statistic(r[None, :], s[None, :], active)[0])
    rng = np.random.default_rng([int(seed), 0x7E4])
    hits = 0
    done = 0
    while done < n_permutations:
        m = min(chunk, n_permutations - done)
        r2 = r + rng.random((m, n)) - 0.5
        s2 = s + rng.random((m, n)) - 0.5
        keep = rng.random((m, n)) < 0.5  # False: the compound's two ranks are swapped
        r3 = np.where(keep, r2, s)
        s3 = np.where(keep, s2, r)
        ep = _statistic(_first_ranks(r3), _first_ranks(s3), active)
        hits += int(np.sum(ep >= e))
        done += m
    return {"statistic": e, "p_value": hits / n_permutations, "n_permutations": int(n_permutations), "n": int(n),
            "n_active": int(active.sum()), "auc_a": roc_auc(y, a), "auc_b": roc_auc(y, b)}


def venkatraman_per_task(y, p_a, p_b, tasks: Sequence[str], *, n_permutations: int = N_PERMUTATIONS,
                         seed: int = 0) -> pd.DataFrame:
    """:func:`venkatraman_test` for every task of two aligned prediction matrices (compounds x tasks) and a label
    matrix (1 / 0 / NaN): one row per task (``reason`` says why a task was not tested; NaN statistics then).
    Each task gets its own seed stream (seed, task position)."""
    y = np.asarray(y, dtype=np.float64)
    p_a = np.asarray(p_a, dtype=np.float64)
    p_b = np.asarray(p_b, dtype=np.float64)
    if not (y.shape == p_a.shape == p_b.shape) or y.ndim != 2 or y.shape[1] != len(tasks):
        raise ValueError(f"venkatraman_per_task: labels {y.shape}, predictions {p_a.shape} and {p_b.shape} and "
                         f"{len(tasks)} tasks must agree")
    rows = []
    for j, t in enumerate(tasks):
        m = ~np.isnan(y[:, j])
        n1 = int(np.sum(y[m, j] == 1))
        row = {"task": str(t), "n": int(m.sum()), "n_active": n1, "statistic": np.nan, "p_value": np.nan,
               "auc_a": np.nan, "auc_b": np.nan, "reason": ""}
        if n1 == 0 or n1 == m.sum():
            row["reason"] = f"one class among measured labels ({n1} active, {int(m.sum()) - n1} inactive)"
        else:
            res = venkatraman_test(y[m, j], p_a[m, j], p_b[m, j], n_permutations=n_permutations,
                                   seed=int(seed) * 100003 + j)
            row.update({k: res[k] for k in ("statistic", "p_value", "auc_a", "auc_b")})
        rows.append(row)
    return pd.DataFrame(rows)
