"""Synthetic well profiles for evaluation benchmarks (``phenovec bench``'s evaluation stage, ``bench/eval_bench.py``).

Replicate compounds on different plates, compounds grouped into MOAs, a plate effect and a per-compound activity:
retrieval by compound and by MOA is neither trivial nor hopeless, so ranking does real work.
"""
from __future__ import annotations

import numpy as np

COMPOUND, MOA, PLATE = "Metadata_Compound", "Metadata_MOA", "Metadata_Plate"
N_REP = 4          # replicate wells per compound, each on a different plate
WELLS_PER_PLATE = 384
DMSO_FRACTION = 0.10


def make_profiles(n: int, dim: int, seed: int = 0):
    """Synthetic well profiles: (meta DataFrame, float32 features N x dim, layout summary).

    Layout: ~10% DMSO wells; the rest are compounds with 4 replicate wells, replicate r of every
    compound on plate group r (so replicates are on 4 different plates); compounds grouped into
    MOAs of 2-8 compounds. Features = noise N(0, 1) + plate effect (0.3 x plate vector) +
    activity x (0.6 x compound vector + 0.4 x MOA vector), activity ~ U(0, 1) per compound
    (DMSO: activity 0). Rows are shuffled.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_cpd = max(8, int(round((1 - DMSO_FRACTION) * n)) // N_REP)
    n_dmso = n - N_REP * n_cpd
    if n_dmso < 1:
        raise ValueError(f"N = {n} is too small")
    n_plates = max(N_REP, N_REP * int(round(n / WELLS_PER_PLATE / N_REP)))
    per_group = n_plates // N_REP
    sizes = []
    while sum(sizes) < n_cpd:
        sizes.append(int(rng.integers(2, 9)))
    sizes[-1] -= sum(sizes) - n_cpd
    if sizes[-1] < 2:  # fold a 0/1-compound tail into the previous MOA
        tail = sizes.pop()
        sizes[-1] += tail
    moa_of_cpd = np.repeat(np.arange(len(sizes)), sizes)
    n_moa = len(sizes)

    cpd = np.concatenate([np.tile(np.arange(n_cpd), N_REP), np.full(n_dmso, -1)])
    rep = np.concatenate([np.repeat(np.arange(N_REP), n_cpd), np.zeros(n_dmso, int)])
    plate = np.where(cpd >= 0, rep * per_group + np.maximum(cpd, 0) % per_group, np.arange(len(cpd)) % n_plates)
    order = rng.permutation(n)
    cpd, plate = cpd[order], plate[order]
    moa = np.where(cpd >= 0, moa_of_cpd[np.maximum(cpd, 0)], -1)

    meta = pd.DataFrame({
        PLATE: [f"P{p:04d}" for p in plate],
        COMPOUND: np.where(cpd >= 0, np.char.add("C", np.char.zfill(cpd.astype(str), 6)), "DMSO"),
        MOA: np.where(moa >= 0, np.char.add("MOA", np.char.zfill(moa.astype(str), 5)), "control"),
    })

    activity = rng.uniform(0, 1, n_cpd).astype(np.float32)
    cpd_vec = rng.standard_normal((n_cpd, dim), dtype=np.float32)
    moa_vec = rng.standard_normal((n_moa, dim), dtype=np.float32)
    plate_vec = rng.standard_normal((n_plates, dim), dtype=np.float32)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    step = 8192
    for s in range(0, n, step):
        sl = slice(s, min(n, s + step))
        x[sl] += 0.3 * plate_vec[plate[sl]]
        c = cpd[sl]
        t = np.flatnonzero(c >= 0)
        a = activity[c[t]][:, None]
        x[sl][t] += a * (0.6 * cpd_vec[c[t]] + 0.4 * moa_vec[moa_of_cpd[c[t]]])
    layout = dict(n=n, dim=dim, n_plates=n_plates, n_compounds=n_cpd, n_dmso=n_dmso, n_moas=n_moa,
                  replicates_per_compound=N_REP, compounds_per_moa="2-8")
    return meta, x, layout
