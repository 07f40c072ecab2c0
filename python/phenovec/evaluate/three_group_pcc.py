"""Three-group pair similarity (MOAProfiler, Wong et al. 2023, Fig. 3f / 5f).

Mean pairwise similarity (PCC in the paper) of three groups of unique well pairs (i < j, no self
pair): (1) same compound (hence same MOA), (2) different compound, same MOA, (3) different compound,
different MOA; each difference of means is tested with a two-sided z-test (each sample is one pair's
similarity; unpooled variances). Published MOAProfiler means: JUMP1 0.53 / 0.23 / 0.02, LINCS 0.51 /
0.11 / 0.0048, all JUMP1 differences p << 0.0001.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.evaluate.moa_labels import moa_labels
from phenovec.evaluate.pair_groups import pair_stats, z_test
from phenovec.evaluate.pairs import DEFAULT_BLOCK_BYTES
from phenovec.evaluate.similarity import as_profiles, check_metric

GROUPS = ("same_compound", "same_moa", "different_moa")
COMPARISONS = (("same_compound", "same_moa"), ("same_moa", "different_moa"), ("same_compound", "different_moa"))


def three_group_pcc(
    profiles,
    feats=None,
    features: Sequence[str] | None = None,
    meta_features: Sequence[str] | None = None,
    *,
    moa_col: str,
    compound_col: str,
    similarity_metric: str = "pearson",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean similarity of same-compound, same-MOA (other compound) and different-MOA pairs; ``(summary, groups)``.

    - ``summary`` (one row): ``same_compound``, ``same_moa``, ``different_moa`` (means), for each comparison
      ``p_<a>_vs_<b>`` and ``z_<a>_vs_<b>`` (``same_compound_vs_same_moa``, ``same_moa_vs_different_moa``,
      ``same_compound_vs_different_moa``), ``n_wells``, ``n_moas``, ``n_compounds``, ``similarity_metric``.
    - ``groups``: one row per group: ``group``, ``mean``, ``sd`` (ddof=1), ``n_pairs``.

    Errors (naming the column): a missing label, one MOA, a MOA with one well, a compound with two MOAs, no
    compound with two wells (no same-compound pair), no MOA with two compounds (no group 2).
    """
    metric = check_metric(similarity_metric)
    prof = as_profiles(profiles, feats, features=features, meta_features=meta_features)
    lab = moa_labels(prof.meta, moa_col, compound_col, what="three_group_pcc")
    moa, cpd = lab.moa, lab.compound
    if np.bincount(cpd).max() < 2:
        raise ValueError(f"compound_col: no compound of column {compound_col!r} has two wells, so there is no "
                         "same-compound pair")
    if pd.DataFrame({"m": moa, "c": cpd}).groupby("m")["c"].nunique().max() < 2:
        raise ValueError(f"moa_col: no MOA of column {moa_col!r} has two compounds (of {compound_col!r}), so there "
                         "is no different-compound same-MOA pair; single-compound MOAs are excluded from this test")

    def category(rows):
        same_c = cpd[rows][:, None] == cpd[None, :]
        same_m = moa[rows][:, None] == moa[None, :]
        return np.where(same_c, 0, np.where(same_m, 1, 2))

    st = pair_stats(prof.feats, metric, category, 3, np.zeros(len(moa), dtype=np.int64), 1, block_bytes=block_bytes)
    stats = {g: st.unique(i) for i, g in enumerate(GROUPS)}
    row = {g: stats[g][1] for g in GROUPS}
    for a, b in COMPARISONS:
        na, ma, sa = stats[a]
        nb, mb, sb = stats[b]
        z, p = z_test(ma, sa, na, mb, sb, nb)
        row[f"p_{a}_vs_{b}"] = p
        row[f"z_{a}_vs_{b}"] = z
    row.update(n_wells=len(moa), n_moas=lab.n_moas, n_compounds=len(lab.compounds), similarity_metric=metric)
    groups = pd.DataFrame([{"group": g, "mean": stats[g][1], "sd": stats[g][2], "n_pairs": stats[g][0]}
                           for g in GROUPS])
    return pd.DataFrame([row]), groups
