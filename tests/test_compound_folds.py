"""Splits by compound (phenovec.train.compound_folds): every row of a compound in one fold, 70 / 10 / 20 of the
compounds, seeded, independent of row order; k-fold; groups; bad input."""
import sys

import numpy as np
import pandas as pd
import pytest

from phenovec.train.compound_folds import (SPLITS, compound_kfold, compound_kfold_table, compound_split,
                                           compound_split_table, fold_sizes)


def _views(n_compounds=50, seed=0):
    """A table of views: each compound 1-8 wells x 6 views, rows shuffled."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_compounds):
        for w in range(int(rng.integers(1, 9))):
            rows += [{"Metadata_compound": f"cpd{c:03d}", "well": f"w{c}-{w}", "view": v} for v in range(6)]
    df = pd.DataFrame(rows)
    return df.iloc[rng.permutation(len(df))].reset_index(drop=True)


def _whole(compounds, labels) -> bool:
    return bool((pd.DataFrame({"c": compounds, "f": labels}).groupby("c")["f"].nunique() == 1).all())


def test_split_keeps_compounds_whole_at_70_10_20():
    df = _views(50)
    s = compound_split_table(df, "Metadata_compound", seed=1)
    assert s.index.equals(df.index) and s.name == "split" and set(s) == set(SPLITS)
    assert _whole(df["Metadata_compound"], s)
    sizes = fold_sizes(df["Metadata_compound"], s).set_index("fold")
    assert sizes.loc[list(SPLITS), "n_compounds"].tolist() == [35, 5, 10]
    assert sizes["n_rows"].sum() == len(df)


def test_split_is_seeded_and_ignores_row_order():
    df = _views(40)
    a = compound_split_table(df, "Metadata_compound", seed=7)
    b = compound_split_table(df.iloc[::-1], "Metadata_compound", seed=7)
    pd.testing.assert_series_equal(a, b.loc[a.index])
    c = compound_split_table(df, "Metadata_compound", seed=8)
    assert not a.equals(c)
    # a seed draws a different test set each time, and over seeds every compound is tested sometimes
    tested = set()
    for seed in range(30):
        s = compound_split_table(df, "Metadata_compound", seed=seed)
        tested |= set(df["Metadata_compound"][s == "test"])
    assert len(tested) == 40


def test_split_fractions_and_groups():
    cpds = [f"c{i}" for i in range(20)]
    s = compound_split(cpds, (0.5, 0.0, 0.5), seed=0)
    assert (s == "train").sum() == 10 and (s == "test").sum() == 10 and "val" not in set(s)
    # groups (scaffolds, say) stay whole: 10 groups of 2 compounds
    groups = [f"g{i // 2}" for i in range(20)]
    s = compound_split(cpds, seed=3, groups=groups)
    assert _whole(groups, s)


def test_kfold_balanced_whole_and_seeded():
    df = _views(23)
    f = compound_kfold_table(df, "Metadata_compound", k=5, seed=2)
    assert f.name == "fold" and set(f) == set(range(5)) and _whole(df["Metadata_compound"], f)
    per = fold_sizes(df["Metadata_compound"], f)["n_compounds"]
    assert per.max() - per.min() <= 1 and per.sum() == 23
    g = compound_kfold_table(df.sample(frac=1.0, random_state=0), "Metadata_compound", k=5, seed=2)
    pd.testing.assert_series_equal(f, g.loc[f.index])
    h = compound_kfold_table(df, "Metadata_compound", k=5, seed=3)
    assert not f.equals(h)
    groups = [f"g{int(c[3:]) % 4}" for c in df["Metadata_compound"]]
    fg = compound_kfold(df["Metadata_compound"], k=3, seed=0, groups=groups)
    assert _whole(groups, fg)


def test_no_torch_at_import():
    import subprocess

    code = ("import sys; import phenovec.train.compound_folds; "
            "print(any(m in sys.modules for m in ('torch', 'torchvision')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bad_inputs():
    df = pd.DataFrame({"cpd": ["a", "b", None, "c"], "x": range(4)})
    with pytest.raises(ValueError, match=r"column 'cpd': row 2 has no compound"):
        compound_split_table(df, "cpd")
    with pytest.raises(ValueError, match=r"compound_column: unknown column 'Metadata_cpd'"):
        compound_split_table(df, "Metadata_cpd")
    with pytest.raises(ValueError, match="fractions must be three non-negative numbers"):
        compound_split(["a", "b"], (0.7, 0.2, 0.2))
    with pytest.raises(ValueError, match="fractions must be three numbers"):
        compound_split(["a", "b"], "abc")
    with pytest.raises(ValueError, match="5 folds need at least 5 distinct compounds; there are 3"):
        compound_kfold(["a", "b", "c", "a"], 5)
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        compound_kfold(["a", "b", "c"], 1)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        compound_split(["a", "b"], seed=-1)
    with pytest.raises(ValueError, match=r"compound 'a' is in more than one group \(g1, g2\)"):
        compound_split(["a", "a", "b"], groups=["g1", "g2", "g3"])
    with pytest.raises(ValueError, match="no rows to split"):
        compound_split([])
