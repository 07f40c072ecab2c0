"""Murcko-scaffold splits (phenovec.activity.scaffold): groups never straddle splits, the shares, the errors, and
the k-fold reproduces the Moshkov et al. 2023 folds from their SMILES."""
from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phenovec.activity.scaffold import (
    SmilesError,
    fold_agreement,
    murcko_scaffold,
    murcko_scaffolds,
    scaffold_groups,
    scaffold_kfold,
    scaffold_split,
    scaffold_split_table,
)

MOSHKOV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "moshkov-2023-assay-metadata"

# ring systems with substituents: the scaffold drops side chains, keeps rings and linkers
RINGS = ["c1ccccc1", "c1ccncc1", "C1CCCCC1", "c1ccc2ccccc2c1", "c1ccoc1", "C1CCNCC1", "c1ccc(cc1)Cc1ccccc1",
         "c1cnc2ccccc2n1", "C1CC1", "c1ccsc1"]
SIDE = ["C", "CC", "O", "N", "CCO", "C(=O)O", "Cl", "F", "OC", "CN"]


def _library(rng: np.random.Generator, n: int) -> list[str]:
    """n SMILES over a skewed scaffold distribution: ring r with a side chain, ring index ~ geometric."""
    out = []
    for _ in range(n):
        r = min(int(rng.geometric(0.3)) - 1, len(RINGS) - 1)
        ring = RINGS[r]
        side = SIDE[int(rng.integers(len(SIDE)))]
        out.append(f"{side}{ring}" if ring[0] in "cC" else ring)
    return out


@lru_cache(maxsize=None)
def _scaffolds(seed: int, n: int, n_chain: int) -> tuple[str, ...]:
    """Scaffolds of a skewed library plus ``n_chain`` singletons (phenyl-linker-cyclopropyl, distinct linkers)."""
    smiles = _library(np.random.default_rng(seed), n) + [f"Cc1ccc(cc1){'C' * i}C1CC1" for i in range(n_chain)]
    return tuple(murcko_scaffolds(smiles))


def test_murcko_scaffold_drops_side_chains_and_generic_is_coarser():
    assert murcko_scaffold("CCc1ccccc1") == murcko_scaffold("OCc1ccccc1") == "c1ccccc1"
    assert murcko_scaffold("CCCCO") == ""  # acyclic: the empty scaffold
    # chirality is dropped (one group for both enantiomers)
    assert murcko_scaffold("C[C@H](N)c1ccccc1C1CC1") == murcko_scaffold("C[C@@H](N)c1ccccc1C1CC1")
    assert murcko_scaffold("Cc1ccncc1") != murcko_scaffold("CC1CCCCC1")
    assert murcko_scaffold("Cc1ccncc1", generic=True) == murcko_scaffold("CC1CCCCC1", generic=True)


def test_unparsable_smiles_names_row_and_string():
    with pytest.raises(SmilesError, match=r"row 2.*'C1CC\(C'"):
        murcko_scaffolds(["CCO", "c1ccccc1", "C1CC(C"])
    with pytest.raises(SmilesError, match=r"row 1: empty"):
        murcko_scaffolds(["CCO", "  "])
    table = pd.DataFrame({"smiles": ["CCO", "c1ccccc1", None]}, index=["a", "b", "cmpd-7"])
    with pytest.raises(SmilesError, match=r"column 'smiles', row cmpd-7: missing"):
        scaffold_split_table(table)
    with pytest.raises(KeyError, match="no SMILES column 'SMILES'"):
        scaffold_split_table(table, smiles_column="SMILES")


@pytest.mark.parametrize("seed", [None, 0, 1, 2])
def test_split_keeps_scaffold_groups_whole_and_hits_the_shares(seed):
    scaffolds = _scaffolds(5, 600, 300)  # singletons so the shares can be met closely
    split = scaffold_split(scaffolds, seed=seed)
    n = len(scaffolds)
    parts = [split.train, split.valid, split.test]
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))  # a partition
    label = split.labels(n)
    for g in scaffold_groups(scaffolds):
        assert len(set(label[g])) == 1
    if seed is None:  # the largest scaffold group is in train
        largest = max(scaffold_groups(scaffolds), key=len)
        assert set(label[largest]) == {"train"}
    fr = np.array([len(p) for p in parts]) / n
    assert abs(fr[0] - 0.7) < 0.1 and fr[1] <= 0.1 + 1e-9 and fr[2] >= 0.1


def test_seeded_split_is_reproducible_and_seed_dependent():
    sc = _scaffolds(5, 600, 300)
    a, b, c = scaffold_split(sc, seed=3), scaffold_split(sc, seed=3), scaffold_split(sc, seed=4)
    assert np.array_equal(a.test, b.test) and np.array_equal(a.train, b.train)
    assert not np.array_equal(a.test, c.test)


def test_bad_fractions_and_k():
    sc = ["a", "b", "c"]
    with pytest.raises(ValueError, match="summing to 1"):
        scaffold_split(sc, (0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="at least 5 distinct scaffolds"):
        scaffold_kfold(sc, 5)


@pytest.mark.parametrize("seed", [None, 7])
def test_kfold_keeps_groups_whole_and_balances(seed):
    sc = _scaffolds(5, 600, 300)
    fold = scaffold_kfold(sc, 5, seed=seed)
    assert set(fold.tolist()) == set(range(5))
    for g in scaffold_groups(sc):
        assert len(set(fold[g].tolist())) == 1
    sizes = np.bincount(fold)
    largest = max(len(g) for g in scaffold_groups(sc))
    assert sizes.max() - sizes.min() <= max(1, largest)


def test_fold_agreement_is_label_invariant():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 300)
    perm = np.array([3, 0, 4, 1, 2])
    assert fold_agreement(a, perm[a])["matched_fraction"] == 1.0
    b = a.copy()
    b[:30] = (b[:30] + 1) % 5
    m = fold_agreement(a, perm[b])["matched_fraction"]
    assert m == pytest.approx(0.9)
    assert fold_agreement(a, rng.integers(0, 5, 300))["adjusted_rand"] < 0.05


def test_kfold_reproduces_moshkov_2023_scaffold_folds():
    """Their folds: chemprop's non-generic Murcko scaffolds of the 16,170 kept compounds, groups by decreasing size
    into the smallest fold, then the fold list shuffled by Python's random.seed(0). Ours matches it row for row."""
    from conftest import shared

    shared("moshkov-2023-assay-metadata")  # missing shared data fails, naming the folder
    smiles = (MOSHKOV / "smiles.txt").read_text().splitlines()[1:]
    keep = np.load(MOSHKOV / "compounds16978to16170.npy")
    paper = np.load(MOSHKOV / "scaffold_based_split.npz")["features"]
    theirs = np.empty(len(keep), dtype=np.int64)
    for f, rows in enumerate(paper):
        theirs[rows] = f
    sc = murcko_scaffolds([smiles[i] for i in keep], source="smiles.txt")
    ours = scaffold_kfold(sc, 5)
    for g in scaffold_groups(sc):  # neither assignment splits a scaffold group
        assert len(set(ours[g].tolist())) == 1 and len(set(theirs[g].tolist())) == 1
    agreement = fold_agreement(ours, theirs)
    assert agreement["matched_fraction"] == 1.0
    order = list(range(5))
    random.Random(0).shuffle(order)  # their fold i is fold order[i] before the shuffle
    assert np.array_equal(np.argsort(order)[ours], theirs)
