"""A synthetic activity benchmark whose actives are driven by mechanisms of action (MOAs): for tests, examples and a
quick look at the learners.

Each MOA has a random centroid in profile space; a compound gets its MOA's centroid (times ``signal``) plus a
compound offset, and each of its replicate wells adds well noise. Task ``moa-k`` asks "is the compound of MOA k":
its actives are MOA k's compounds, its inactives a seeded sample of ``inactive_ratio`` times as many others (the
rest are unmeasured, so the table is sparse). ``signal=0`` (or ``shuffle=True``, which permutes the wells across
compounds) removes what links profiles to labels, and every learner should sit at chance.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def synthetic_activity(*, n_moas: int = 12, compounds_per_moa: int = 20, replicates: int = 3,
                       n_features: int = 32, signal: float = 1.0, inactive_ratio: int = 2,
                       shuffle: bool = False, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(labels, wells)``: the long label table (``compound``, ``assay``, ``label``) and the well profiles
    (``Metadata_compound``, ``Metadata_MOA``, ``Metadata_replicate``, features ``Cells_f0 ..``)."""
    rng = np.random.default_rng([seed, 0xAC7])
    n = n_moas * compounds_per_moa
    moa = np.repeat(np.arange(n_moas), compounds_per_moa)
    compounds = np.array([f"cpd-{i:04d}" for i in range(n)], dtype=object)
    centroids = rng.normal(size=(n_moas, n_features)) * 1.5
    per_compound = signal * centroids[moa] + 0.7 * rng.normal(size=(n, n_features))
    wells = np.repeat(per_compound, replicates, axis=0) + 0.5 * rng.normal(size=(n * replicates, n_features))
    if shuffle:
        wells = wells[rng.permutation(len(wells))]
    meta = pd.DataFrame({"Metadata_compound": np.repeat(compounds, replicates),
                         "Metadata_MOA": np.repeat([f"moa-{k}" for k in moa], replicates),
                         "Metadata_replicate": np.tile(np.arange(replicates), n)})
    feats = pd.DataFrame(wells.astype(np.float32), columns=[f"Cells_f{j}" for j in range(n_features)])
    rows = []
    for k in range(n_moas):
        act = np.flatnonzero(moa == k)
        others = np.flatnonzero(moa != k)
        inact = rng.choice(others, min(len(others), inactive_ratio * len(act)), replace=False)
        rows += [(compounds[i], f"moa-{k}", 1) for i in act] + [(compounds[i], f"moa-{k}", 0) for i in inact]
    labels = pd.DataFrame(rows, columns=["compound", "assay", "label"])
    labels["label"] = labels["label"].astype(np.int8)
    return labels, pd.concat([meta, feats], axis=1)
