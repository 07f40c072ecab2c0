"""Intra- vs inter-MOA similarity and their delta (MOAProfiler, Wong et al. 2023, Fig. 3c / 5c).

The average pairwise similarity (PCC in the paper) over all same-MOA well pairs (``intra``) and over
all different-MOA pairs (``inter``); ``delta = intra - inter``; error bars are +-1 SD. Pairs are
unique (i < j), no well with itself; same-compound pairs count as same-MOA pairs. Published deltas
(MOAProfiler / CellProfiler / DeepProfiler): JUMP1 0.30 / 0.20 / 0.18, LINCS 0.17 / 0.10 / 0.16.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.evaluate.moa_labels import moa_labels
from phenovec.evaluate.pair_groups import pair_stats, z_test
from phenovec.evaluate.pairs import DEFAULT_BLOCK_BYTES
from phenovec.evaluate.similarity import as_profiles, check_metric

SAME, DIFFERENT = 0, 1


def moa_similarity_delta(
    profiles,
    feats=None,
    features: Sequence[str] | None = None,
    meta_features: Sequence[str] | None = None,
    *,
    moa_col: str,
    compound_col: str | None = None,
    similarity_metric: str = "pearson",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and SD of same-MOA and different-MOA pair similarities; returns ``(summary, per_moa)``.

    ``profiles`` is a whole profile table (``feats=None``) or a metadata frame with ``feats``; every row is
    an evaluated well (drop DMSO and single-compound MOAs first: :func:`moa_test_wells`). ``compound_col``
    (optional) is only checked: each compound must carry one MOA.

    - ``summary`` (one row): ``intra``, ``intra_sd``, ``inter``, ``inter_sd``, ``delta``, ``n_intra_pairs``,
      ``n_inter_pairs``, ``z`` and ``p_value`` (two-sided z-test of intra vs inter), ``n_wells``, ``n_moas``,
      ``similarity_metric``. SDs use ddof=1.
    - ``per_moa``: one row per MOA: ``moa_col``, ``n_wells``, ``intra`` / ``intra_sd`` / ``n_intra_pairs``
      (pairs of its own wells), ``inter`` / ``inter_sd`` / ``n_inter_pairs`` (its wells against every other
      MOA's), ``delta``.

    Errors (naming the column): a missing label, one MOA, a MOA with one well.
    """
    metric = check_metric(similarity_metric)
    prof = as_profiles(profiles, feats, features=features, meta_features=meta_features)
    lab = moa_labels(prof.meta, moa_col, compound_col, what="moa_similarity_delta")
    moa = lab.moa

    def category(rows):
        return np.where(moa[rows][:, None] == moa[None, :], SAME, DIFFERENT)

    st = pair_stats(prof.feats, metric, category, 2, moa, lab.n_moas, block_bytes=block_bytes)
    n_in, intra, intra_sd = st.unique(SAME)
    n_out, inter, inter_sd = st.unique(DIFFERENT)
    z, p = z_test(intra, intra_sd, n_in, inter, inter_sd, n_out)
    summary = pd.DataFrame([{
        "intra": intra, "intra_sd": intra_sd, "inter": inter, "inter_sd": inter_sd, "delta": intra - inter,
        "n_intra_pairs": n_in, "n_inter_pairs": n_out, "z": z, "p_value": p,
        "n_wells": len(moa), "n_moas": lab.n_moas, "similarity_metric": metric,
    }])
    gi = st.by_group(SAME, halve=True)
    go = st.by_group(DIFFERENT, halve=False)
    table = pd.DataFrame({
        moa_col: lab.moas, "n_wells": np.bincount(moa, minlength=lab.n_moas),
        "intra": gi[1], "intra_sd": gi[2], "n_intra_pairs": gi[0],
        "inter": go[1], "inter_sd": go[2], "n_inter_pairs": go[0],
    })
    table["delta"] = table["intra"] - table["inter"]
    return summary, table
