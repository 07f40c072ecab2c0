"""Batch-effect diagnostic: same-MOA similarity within vs across plates, and the DMSO batch-enrichment score.

- MOAProfiler (Wong et al. 2023, ESI Fig. 7): the average similarity (PCC) of same-MOA well pairs on the
  same plate minus that of same-MOA pairs on different plates; published 0.01 for JUMP1 and 0.10 for LINCS.
  Unique pairs, no self pair, two-sided z-test of the difference.
- Bornholdt (2021, DeepProfiler on LINCS, thesis section 4): the *batch enrichment score* (BES) is the
  enrichment odds ratio (:func:`phenovec.evaluate.enrichment`, cytominer-eval semantics) over the DMSO wells
  only, with the batch as the replicate group, at the 99.5th percentile: high when DMSO wells of one batch
  are more alike than DMSO wells of different batches.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.evaluate.enrichment import enrichment
from phenovec.evaluate.moa_labels import moa_labels
from phenovec.evaluate.pair_groups import pair_stats, z_test
from phenovec.evaluate.pairs import DEFAULT_BLOCK_BYTES, check_columns, encode_column
from phenovec.evaluate.similarity import as_profiles, check_metric

WITHIN, ACROSS = 0, 1


def batch_diagnostic(
    profiles,
    feats=None,
    features: Sequence[str] | None = None,
    meta_features: Sequence[str] | None = None,
    *,
    moa_col: str,
    compound_col: str,
    plate_col: str,
    batch_col: str | None = None,
    control: str | None = "DMSO",
    bes_percentile: float = 0.995,
    similarity_metric: str = "pearson",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Same-MOA similarity within vs across ``plate_col`` and the control batch-enrichment score.

    Rows whose ``compound_col`` equals ``control`` are the DMSO wells: they give the batch-enrichment score
    (replicate groups ``batch_col``, default ``plate_col``) and are left out of the same-MOA pairs; every
    other row is an evaluated well. ``control=None``: no control rows, no score.

    - ``summary`` (one row): ``same_moa_within_plate``, ``same_moa_across_plates``, ``difference`` (within -
      across), ``z``, ``p_value``, ``n_within_pairs``, ``n_across_pairs``, ``n_plates``, ``n_wells``, and with a
      control ``batch_enrichment`` (odds ratio), ``batch_enrichment_p_value``, ``batch_enrichment_percentile``,
      ``n_control_wells``, ``n_batches``; ``similarity_metric``.
    - ``per_moa``: ``moa_col``, ``n_wells``, ``n_plates``, ``within`` / ``n_within_pairs``, ``across`` /
      ``n_across_pairs``, ``difference``.

    Errors (naming the column): missing labels or plates, one MOA, a MOA with one well, no same-MOA pair
    across plates (one plate), no control row when ``control`` is given, controls all in one batch.
    """
    metric = check_metric(similarity_metric)
    prof = as_profiles(profiles, feats, features=features, meta_features=meta_features)
    meta = prof.meta
    check_columns(meta, [compound_col], "compound_col")
    check_columns(meta, [plate_col], "plate_col")
    encode_column(meta, plate_col, "plate_col")
    batch_col = plate_col if batch_col is None else batch_col
    is_ctrl = np.zeros(len(meta), dtype=bool) if control is None else (meta[compound_col] == control).to_numpy()
    if control is not None and not is_ctrl.any():
        raise ValueError(f"compound_col: no row of column {compound_col!r} is the control {control!r}; the batch-"
                         "enrichment score needs the control (DMSO) wells (control=None skips it)")
    rows = np.flatnonzero(~is_ctrl)
    wells = meta.iloc[rows].reset_index(drop=True)
    lab = moa_labels(wells, moa_col, compound_col, what="batch_diagnostic")
    moa = lab.moa
    plate = pd.factorize(wells[plate_col])[0]

    def category(r):
        same_m = moa[r][:, None] == moa[None, :]
        return np.where(same_m, np.where(plate[r][:, None] == plate[None, :], WITHIN, ACROSS), -1)

    x = np.asarray(prof.feats)[rows]
    st = pair_stats(x, metric, category, 2, moa, lab.n_moas, block_bytes=block_bytes)
    n_w, within, within_sd = st.unique(WITHIN)
    n_a, across, across_sd = st.unique(ACROSS)
    if n_a == 0:
        raise ValueError(f"plate_col: no same-MOA pair of wells is on two plates of column {plate_col!r} "
                         f"({plate.max() + 1} plate(s)); the within- vs across-plate comparison needs several")
    z, p = z_test(within, within_sd, n_w, across, across_sd, n_a)
    row = {"same_moa_within_plate": within, "same_moa_across_plates": across, "difference": within - across,
           "z": z, "p_value": p, "n_within_pairs": n_w, "n_across_pairs": n_a, "n_plates": int(plate.max() + 1),
           "n_wells": len(rows)}
    if control is not None:
        cmeta = meta.iloc[np.flatnonzero(is_ctrl)].reset_index(drop=True)
        check_columns(cmeta, [batch_col], "batch_col")
        encode_column(cmeta, batch_col, "batch_col")
        try:
            e = enrichment(cmeta, np.asarray(prof.feats)[is_ctrl], replicate_groups=[batch_col],
                           percentile=bes_percentile, similarity_metric=metric)
        except ValueError as err:
            raise ValueError(f"batch_col: batch-enrichment score of the {int(is_ctrl.sum())} {control!r} wells by "
                             f"{batch_col!r}: {err}") from None
        row.update(batch_enrichment=float(e["odds_ratio"].iloc[0]), batch_enrichment_p_value=float(e["p-value"].iloc[0]),
                   batch_enrichment_percentile=bes_percentile, n_control_wells=int(is_ctrl.sum()),
                   n_batches=int(cmeta[batch_col].nunique()))
    row["similarity_metric"] = metric
    gw = st.by_group(WITHIN, halve=True)
    ga = st.by_group(ACROSS, halve=True)
    table = pd.DataFrame({
        moa_col: lab.moas, "n_wells": np.bincount(moa, minlength=lab.n_moas),
        "n_plates": pd.Series(plate).groupby(moa).nunique().reindex(range(lab.n_moas)).to_numpy(),
        "within": gw[1], "n_within_pairs": gw[0], "across": ga[1], "n_across_pairs": ga[0],
    })
    table["difference"] = table["within"] - table["across"]
    return pd.DataFrame([row]), table
