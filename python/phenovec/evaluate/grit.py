"""grit: strength of a perturbation's phenotype relative to controls, within its larger group.

Peer: cytominer-eval 0.1 ``operations.grit`` (``evaluate(operation="grit")``), same arguments and
output columns. The similarity matrix is computed in blocks of rows by the Rust core, never as the
pandas N x N melt the peer builds.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.evaluate.pairs import DEFAULT_BLOCK_BYTES, as_list, check_columns, encode_column
from phenovec.evaluate.similarity import as_profiles, check_metric, iter_similarity_blocks

GRIT_SUMMARY_METHODS = ("mean", "median")


def control_rows(meta: pd.DataFrame, col: str, control_perts, arg: str = "control_perts") -> np.ndarray:
    """Row mask of ``meta[col]`` in ``control_perts``; every control perturbation must occur.

    Matching is on the column's own values (the peer casts all metadata to ``str`` first, so with a
    non-string column the peer needs ``control_perts`` as strings and we need them as values).
    """
    perts = as_list(control_perts)
    if not perts:
        raise ValueError(f"{arg} is empty: name at least one control perturbation of column {col!r}")
    present = set(pd.unique(meta[col]).tolist())
    missing = [p for p in perts if p not in present]
    if missing:
        raise ValueError(
            f"{arg}: {missing[0]!r} does not occur in column {col!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    return meta[col].isin(perts).to_numpy()


def grit(
    profiles,
    feats=None,
    features: Sequence[str] | None = None,
    meta_features: Sequence[str] | None = None,
    *,
    control_perts,
    profile_col: str,
    replicate_group_col: str,
    similarity_metric: str = "pearson",
    grit_replicate_summary_method: str = "mean",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> pd.DataFrame:
    """grit of every perturbation (every distinct value of ``profile_col``).

    ``profiles`` is a whole profile table (``feats=None``; ``features`` / ``meta_features`` pick the
    columns, else ``Metadata_*`` are metadata) or a metadata frame with ``feats`` a matrix.

    For perturbation p with rows R_p (pooled, as the peer groups the melted pairs by p):

    - control distribution: similarities s(i, j) for i in R_p and j any row whose ``profile_col``
      is in ``control_perts``, i != j (a control perturbation keeps its own other replicates);
    - target distribution: s(i, j) for i in R_p and j in the same ``replicate_group_col`` value but a
      different perturbation;
    - z = (target - mean(control)) / sd(control) with ddof=0 (sklearn ``StandardScaler``), and
      grit = mean(z) or median(z) (``grit_replicate_summary_method``; the median of an even count
      is the mean of the two middle values, as ``np.median``).

    Output: one row per perturbation, sorted by perturbation (the peer's groupby order), columns
    ``perturbation``, ``group``, ``grit`` as cytominer-eval; the values keep the column's dtype
    (the peer turns them into ``str``). No ties are involved (no ranking).

    Policies: ``grit`` is NaN where p has no target (no other perturbation in its group), exactly
    as the peer, and only there. Errors instead of the peer's silent or arbitrary results: a
    control perturbation that does not occur; a perturbation with fewer than two control
    similarities (the peer asserts the same); control similarities with zero spread (the peer's
    ``StandardScaler`` would divide by 1 instead); a perturbation in two groups (the peer asserts);
    missing values in ``profile_col`` / ``replicate_group_col`` (the peer turns NaN into the string
    ``"nan"``, one group; fill them with a label to get that); NaN/inf features or rows with zero
    variance under pearson/spearman; ``kendall`` (not implemented). ``cosine`` and ``euclidean``
    are extra metrics the peer does not have.

    Matches cytominer-eval 0.1 to about 1e-12 on its LINCS test plate (tests/test_eval_grit_mp_value.py).
    """
    if grit_replicate_summary_method not in GRIT_SUMMARY_METHODS:
        raise ValueError(
            f"grit_replicate_summary_method {grit_replicate_summary_method!r}: method not supported, "
            f"use one of: {', '.join(GRIT_SUMMARY_METHODS)}"
        )
    metric = check_metric(similarity_metric)
    prof = as_profiles(profiles, feats, features=features, meta_features=meta_features)
    meta = prof.meta
    check_columns(meta, [profile_col], "profile_col")
    check_columns(meta, [replicate_group_col], "replicate_group_col")
    encode_column(meta, profile_col, "profile_col")  # missing values raise
    grp_codes = encode_column(meta, replicate_group_col, "replicate_group_col")
    pert_codes, pert_values = pd.factorize(meta[profile_col], sort=True)
    pert_codes = pert_codes.astype(np.int64)
    n, n_pert = len(meta), len(pert_values)

    # one group per perturbation
    pairs = np.unique(np.stack([pert_codes, grp_codes], axis=1), axis=0)
    if len(pairs) != n_pert:
        p = pairs[np.flatnonzero(np.diff(pairs[:, 0]) == 0)[0], 0]
        groups = meta.loc[pert_codes == p, replicate_group_col].unique().tolist()
        raise ValueError(
            f"perturbation {pert_values[p]!r} ({profile_col!r}) belongs to several groups of "
            f"{replicate_group_col!r}: {groups[:3]}; grit needs one group per perturbation"
        )

    ctrl_idx = np.flatnonzero(control_rows(meta, profile_col, control_perts))
    members = pd.Series(np.arange(n)).groupby(grp_codes).indices

    # per-row control statistics (count, mean, sum of squared deviations), pooled per perturbation below
    c_n = np.zeros(n)
    c_mean = np.zeros(n)
    c_m2 = np.zeros(n)
    t_sum = np.zeros(n_pert)
    t_cnt = np.zeros(n_pert, dtype=np.int64)
    t_vals: list[list[np.ndarray]] = [[] for _ in range(n_pert)]
    median = grit_replicate_summary_method == "median"

    for rows, block in iter_similarity_blocks(prof.feats, metric, block_bytes=block_bytes):
        block = block.astype(np.float64, copy=False)
        c = block[:, ctrl_idx]
        keep = rows[:, None] != ctrl_idx[None, :]
        cnt = keep.sum(axis=1)
        s = np.where(keep, c, 0.0).sum(axis=1)
        mean = np.divide(s, cnt, out=np.zeros(len(rows)), where=cnt > 0)
        dev = np.where(keep, c - mean[:, None], 0.0)
        c_n[rows], c_mean[rows], c_m2[rows] = cnt, mean, (dev * dev).sum(axis=1)

        bgrp = grp_codes[rows]
        for g in np.unique(bgrp):
            pos = np.flatnonzero(bgrp == g)
            cols = members[g]
            sub = block[np.ix_(pos, cols)]
            qp = pert_codes[rows[pos]]
            tk = pert_codes[cols][None, :] != qp[:, None]
            np.add.at(t_sum, qp, np.where(tk, sub, 0.0).sum(axis=1))
            np.add.at(t_cnt, qp, tk.sum(axis=1))
            if median:
                for r, p in enumerate(qp):
                    t_vals[p].append(sub[r][tk[r]])

    # pool the per-row control statistics per perturbation (Chan et al.), exact to rounding
    n_tot = np.bincount(pert_codes, weights=c_n, minlength=n_pert)
    out = np.full(n_pert, np.nan)
    bad = np.flatnonzero(n_tot < 2)
    if len(bad):
        raise ValueError(
            f"perturbation {pert_values[bad[0]]!r} has {int(n_tot[bad[0]])} similarities to control "
            f"profiles (at least 2 needed): control_perts must name perturbations with enough rows"
        )
    mu = np.bincount(pert_codes, weights=c_n * c_mean, minlength=n_pert) / n_tot
    m2 = np.bincount(pert_codes, weights=c_m2 + c_n * (c_mean - mu[pert_codes]) ** 2, minlength=n_pert)
    sd = np.sqrt(m2 / n_tot)
    flat = np.flatnonzero(~(sd > 1e-12 * np.maximum(1.0, np.abs(mu))))
    if len(flat):
        raise ValueError(
            f"perturbation {pert_values[flat[0]]!r}: its similarities to the control profiles are all "
            f"equal ({mu[flat[0]]:.6g}), so the control z-score is undefined"
        )
    has = t_cnt > 0
    if median:
        centre = np.array([np.median(np.concatenate(v)) if c else np.nan for v, c in zip(t_vals, t_cnt)])
    else:
        centre = np.divide(t_sum, t_cnt, out=np.full(n_pert, np.nan), where=has)
    out[has] = (centre[has] - mu[has]) / sd[has]

    first_row = np.full(n_pert, -1)
    first_row[pert_codes[::-1]] = np.arange(n)[::-1]
    group_values = meta[replicate_group_col].to_numpy()[first_row]
    return pd.DataFrame({"perturbation": np.asarray(pert_values), "group": group_values, "grit": out})
