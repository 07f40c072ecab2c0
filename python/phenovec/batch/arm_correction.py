"""CRISPR chromosome-arm correction (JUMP profiling recipe, ``correct.corrections.arm_correction``): CRISPR knockouts
of genes on the same chromosome arm share a profile from the DNA cuts themselves (proximity bias), so each arm's mean
profile over knockouts of *unexpressed* genes (no true knockout phenotype) is subtracted from every profile on that
arm.

Here: ``arm`` gives each row's arm (missing: the row is not corrected, as the recipe's rows without a chromosome),
``background`` selects the rows whose knockouts are unexpressed genes (the recipe: zFPKM < -3), ``gene`` names the
gene of each row. An arm is corrected only when its background rows cover more than ``min_genes`` distinct genes (the
recipe: > 20 unexpressed genes on the arm, counted in its expression table); rows of other arms are unchanged. The
arm's mean ignores missing values (pandas ``mean``); an infinite value in a background row has no mean and is refused
(the ``arm_correction`` step names its row and feature)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def fit_arm_means(x: np.ndarray, arms, background: np.ndarray, genes=None, min_genes: int = 20):
    """``(arm labels, means)`` for the arms with more than ``min_genes`` distinct background genes."""
    x = np.asarray(x, dtype=np.float64)
    arms = pd.Series(arms).reset_index(drop=True)
    background = np.asarray(background, dtype=bool) & arms.notna().to_numpy()
    genes = pd.Series(np.arange(len(arms)) if genes is None else genes).reset_index(drop=True)
    labels, means = [], []
    for arm, rows in arms[background].groupby(arms[background], sort=True).groups.items():
        rows = np.asarray(rows)
        if genes[rows].nunique() <= min_genes:
            continue
        with np.errstate(invalid="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                means.append(np.nanmean(x[rows], axis=0))
        labels.append(arm.item() if isinstance(arm, np.generic) else arm)
    d = x.shape[1]
    return labels, (np.vstack(means) if means else np.empty((0, d)))


def apply_arm_means(x: np.ndarray, arms, labels: list, means: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Subtract each corrected arm's mean (NaN means count as 0, as the recipe's ``fillna(0)``) from the rows on it
    (``rows``: only those rows, e.g. the CRISPR plates)."""
    out = np.array(x, dtype=np.float64, copy=True)
    arms = pd.Series(arms).reset_index(drop=True)
    sel = np.ones(len(out), dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    m = np.where(np.isnan(means), 0.0, means)  # not nan_to_num: it also made an inf mean +-1.8e308
    for i, arm in enumerate(labels):
        on = sel & (arms == arm).to_numpy()
        out[on] -= m[i]
    return out
