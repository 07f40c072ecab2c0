"""Bemis-Murcko scaffold splits of compounds (FSL-CP thesis ch. 3 folds, ch. 4 70/10/20; Moshkov et al. 2023 folds).

A compound's scaffold is RDKit's Murcko framework (ring systems plus the linkers between them, side chains
removed), written as canonical SMILES without stereochemistry -- the non-generic scaffold that chemprop, DeepChem
and the Moshkov et al. 2023 folds use (``generic=True`` also turns every atom into carbon and every bond into a
single bond, a coarser grouping). Acyclic compounds have the empty scaffold ``""`` and so form one group.

Compounds that share a scaffold always land in the same split / fold: the splits are built from whole scaffold
groups.

- :func:`scaffold_split`: train / valid / test at 70 / 10 / 20 by default. Without a seed the largest groups go to
  train first (DeepChem's deterministic order: groups sorted by size, ties by first appearance; a group goes to
  train while train stays within its share, else to valid while that stays within its share, else to test). With
  a seed it is chemprop's ``balanced`` variant: groups larger than half the valid or the test share go to train
  first, the other groups in a seeded random order.
- :func:`scaffold_kfold`: k folds; groups in decreasing size, each into the currently smallest fold (the algorithm
  of Moshkov et al. 2023, ``python/scaffold_split.py``). A seed breaks ties between equal-sized groups at random and
  permutes the fold labels; without it ties go by first appearance.
- :func:`fold_agreement`: how far two fold assignments of the same compounds agree, up to a relabelling of folds.

Bad input -- a SMILES that RDKit cannot parse, an empty or missing one -- is a :class:`SmilesError` naming the
row (and the column, for a table) and the string.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SmilesError",
    "ScaffoldSplit",
    "murcko_scaffold",
    "murcko_scaffolds",
    "scaffold_groups",
    "scaffold_split",
    "scaffold_kfold",
    "scaffold_split_table",
    "fold_agreement",
]


class SmilesError(ValueError):
    """A SMILES string RDKit cannot read (the message names the row and the string)."""


def _parse(smiles, where: str):
    from rdkit import Chem, rdBase

    if smiles is None or (isinstance(smiles, float) and np.isnan(smiles)) or not isinstance(smiles, str):
        raise SmilesError(f"{where}: missing SMILES (got {smiles!r})")
    if not smiles.strip():
        raise SmilesError(f"{where}: empty SMILES")
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise SmilesError(f"{where}: RDKit cannot parse the SMILES {smiles!r}")
    return mol


def murcko_scaffold(smiles: str, *, generic: bool = False, where: str = "SMILES") -> str:
    """The Murcko scaffold of one compound as canonical SMILES (no stereochemistry); ``""`` for acyclic ones."""
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold

    mol = _parse(smiles, where)
    core = MurckoScaffold.GetScaffoldForMol(mol)
    if generic and core.GetNumAtoms():
        core = MurckoScaffold.MakeScaffoldGeneric(core)
    return Chem.MolToSmiles(core, isomericSmiles=False)


def murcko_scaffolds(smiles: Sequence[str], *, generic: bool = False, source: str = "smiles",
                     row_names: Sequence | None = None) -> list[str]:
    """Scaffolds of many compounds; an unreadable SMILES raises :class:`SmilesError` naming ``source`` and its row
    (``row_names[i]`` when given, else the 0-based position)."""
    out = []
    for i, s in enumerate(smiles):
        row = row_names[i] if row_names is not None else i
        out.append(murcko_scaffold(s, generic=generic, where=f"{source}, row {row}"))
    return out


def scaffold_groups(scaffolds: Sequence[str]) -> list[np.ndarray]:
    """Row indices per distinct scaffold, groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(scaffolds):
        groups.setdefault(s, []).append(i)
    return [np.asarray(g, dtype=np.int64) for g in groups.values()]


def _largest_first(groups: list[np.ndarray], rng: np.random.Generator | None) -> list[np.ndarray]:
    order = list(range(len(groups)))
    if rng is not None:  # random tie-break between equal sizes; the sort below is stable
        order = list(rng.permutation(len(groups)))
    order.sort(key=lambda g: -len(groups[g]))
    return [groups[g] for g in order]


@dataclass(frozen=True)
class ScaffoldSplit:
    """Row indices (sorted) of the train, valid and test compounds."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    def labels(self, n: int) -> np.ndarray:
        """Per row ``"train"`` / ``"valid"`` / ``"test"``."""
        out = np.empty(n, dtype=object)
        out[self.train], out[self.valid], out[self.test] = "train", "valid", "test"
        return out


def _check_fractions(fractions) -> tuple[float, float, float]:
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or min(f) < 0 or abs(sum(f) - 1.0) > 1e-6:
        raise ValueError(f"scaffold split fractions must be three non-negative numbers summing to 1 "
                         f"(train, valid, test); got {tuple(fractions)}")
    return f


def scaffold_split(scaffolds: Sequence[str], fractions=(0.7, 0.1, 0.2), *, seed: int | None = None) -> ScaffoldSplit:
    """Split rows by scaffold into train / valid / test (see the module doc for the two orders)."""
    f_train, f_valid, f_test = _check_fractions(fractions)
    n = len(scaffolds)
    if n == 0:
        raise ValueError("scaffold split of no compounds")
    groups = scaffold_groups(scaffolds)
    train: list[np.ndarray] = []
    valid: list[np.ndarray] = []
    test: list[np.ndarray] = []
    if seed is None:
        train_cut, valid_cut = f_train * n, (f_train + f_valid) * n
        n_train = n_valid = 0
        for g in _largest_first(groups, None):
            if n_train + len(g) <= train_cut:
                train.append(g)
                n_train += len(g)
            elif n_train + n_valid + len(g) <= valid_cut:
                valid.append(g)
                n_valid += len(g)
            else:
                test.append(g)
    else:
        rng = np.random.default_rng(seed)
        size = {"train": f_train * n, "valid": f_valid * n, "test": f_test * n}
        big = [g for g in groups if len(g) > size["valid"] / 2 or len(g) > size["test"] / 2]
        small = [g for g in groups if not (len(g) > size["valid"] / 2 or len(g) > size["test"] / 2)]
        big = [big[i] for i in rng.permutation(len(big))]
        small = [small[i] for i in rng.permutation(len(small))]
        counts = {"train": 0, "valid": 0, "test": 0}
        bins = {"train": train, "valid": valid, "test": test}
        for g in big + small:
            for name in ("train", "valid", "test"):
                if counts[name] + len(g) <= size[name] or name == "test":
                    bins[name].append(g)
                    counts[name] += len(g)
                    break

    def cat(parts):
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    return ScaffoldSplit(cat(train), cat(valid), cat(test))


def scaffold_kfold(scaffolds: Sequence[str], k: int = 5, *, seed: int | None = None) -> np.ndarray:
    """Fold index (0 .. k-1) per row: scaffold groups, largest first, each into the currently smallest fold."""
    if int(k) != k or k < 2:
        raise ValueError(f"scaffold k-fold needs an integer k >= 2; got {k!r}")
    k = int(k)
    groups = scaffold_groups(scaffolds)
    if len(groups) < k:
        raise ValueError(f"scaffold k-fold with k={k} needs at least {k} distinct scaffolds; got {len(groups)}")
    rng = np.random.default_rng(seed) if seed is not None else None
    sizes = [0] * k
    fold = np.empty(len(scaffolds), dtype=np.int64)
    for g in _largest_first(groups, rng):
        j = sizes.index(min(sizes))
        fold[g] = j
        sizes[j] += len(g)
    if rng is not None:
        fold = rng.permutation(k)[fold]
    return fold


def scaffold_split_table(table, smiles_column: str = "smiles", fractions=(0.7, 0.1, 0.2), *,
                         seed: int | None = None, generic: bool = False, source: str = "table"):
    """``"train"`` / ``"valid"`` / ``"test"`` per row of a pandas table from its SMILES column (a pandas Series
    aligned with the table). A missing column or an unreadable SMILES is an error naming it and the row."""
    import pandas as pd

    if smiles_column not in table.columns:
        raise KeyError(f"{source}: no SMILES column {smiles_column!r} (columns: {list(table.columns)[:20]})")
    scaffolds = murcko_scaffolds(table[smiles_column].tolist(), generic=generic,
                                 source=f"{source}, column {smiles_column!r}", row_names=list(table.index))
    split = scaffold_split(scaffolds, fractions, seed=seed)
    return pd.Series(split.labels(len(table)), index=table.index, name="split")


def fold_agreement(ours: np.ndarray, theirs: np.ndarray) -> dict:
    """Agreement of two fold assignments of the same rows, invariant to renaming folds.

    ``matched_fraction``: the share of rows whose fold agrees under the best one-to-one matching of fold labels
    (Hungarian assignment on the contingency table); ``adjusted_rand``: the adjusted Rand index (1 = identical
    partitions, about 0 = chance); ``contingency``: rows = our folds, columns = theirs.
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score

    ours, theirs = np.asarray(ours), np.asarray(theirs)
    if ours.shape != theirs.shape or ours.ndim != 1:
        raise ValueError(f"fold assignments must be two 1-D arrays of the same length; got {ours.shape} and "
                         f"{theirs.shape}")
    a_labels, a = np.unique(ours, return_inverse=True)
    b_labels, b = np.unique(theirs, return_inverse=True)
    table = np.zeros((len(a_labels), len(b_labels)), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    r, c = linear_sum_assignment(-table)
    return {
        "matched_fraction": float(table[r, c].sum() / len(ours)),
        "adjusted_rand": float(adjusted_rand_score(ours, theirs)),
        "contingency": table,
    }
