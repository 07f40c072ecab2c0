"""Rank-based inverse normal transform with Blom's constant (JUMP profiling recipe,
``preprocessing.transform.rank_int_array``): per feature, ``Phi^-1((r - c) / (n - 2c + 1))`` with ``c = 3/8``, i.e.
``(r - 3/8) / (n + 1/4)``, ``r`` the rank of the value among the ``n`` rows.

Ties: ``"stochastic"`` (the recipe's default) ranks tied values in a random order: the rows are permuted with
``numpy.random.default_rng(seed).permutation(n)`` (a fresh generator per feature, seed 0, as the recipe), ranked
``ordinal`` (scipy ``rankdata``) and permuted back; ``"average"`` gives tied values their mean rank. Missing values
are refused (the recipe's ``rankdata`` would turn the whole feature into NaN)."""
from __future__ import annotations

import numpy as np

from phenovec.batch.finite import require_finite

BLOM = 3.0 / 8.0


def blom_transform(x: np.ndarray, ties: str = "stochastic", seed: int = 0, c: float = BLOM, *,
                   in_place: bool = False) -> np.ndarray:
    """Apply the transform to every column of ``x`` (n x d); ``ValueError`` naming the first missing entry.
    ``in_place=True`` (``x`` a float64 array of the caller's own) writes the result into ``x``. A few columns at a
    time: the ranks' temporaries are slabs, not tables (the whole-table version held ~5 float64 copies at once)."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    if ties not in ("stochastic", "average"):
        raise ValueError(f"ties must be 'stochastic' or 'average', got {ties!r}")
    out = x if in_place and isinstance(x, np.ndarray) and x.dtype == np.float64 else np.array(x, dtype=np.float64)
    require_finite(out, "rank inverse-normal transform")
    n = out.shape[0]
    if ties == "stochastic":
        perm = np.random.default_rng(seed=seed).permutation(n)
        back = np.argsort(perm)
    for lo in range(0, out.shape[1], _COLUMNS):
        cols = slice(lo, lo + _COLUMNS)
        if ties == "stochastic":
            ranks = rankdata(out[perm, cols], method="ordinal", axis=0)[back]
        else:
            ranks = rankdata(out[:, cols], method="average", axis=0)
        out[:, cols] = ndtri((ranks - c) / (n - 2 * c + 1))
    return out


_COLUMNS = 16  # columns ranked at a time
