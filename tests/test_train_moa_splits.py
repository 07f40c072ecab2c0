"""MOAProfiler training splits (phenovec.train.moa_splits): well-holdout, compound-holdout, balancing, the
evaluated rows. Small synthetic plates; every expectation is recomputed from the returned split."""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from phenovec.train.moa_splits import (
    PlateSpreadWarning,
    balance_by_duplication,
    compound_holdout_split,
    evaluation_rows,
    well_holdout_split,
)

MOA, CPD, PLATE, WELL = "Metadata_moa", "Metadata_Compound", "Metadata_Plate", "Metadata_Well"


def fields(design, n_plates=10, fields_per_well=3, seed=0):
    """``design``: {moa: {compound: n_wells}}; a compound's wells are dealt round-robin over the plates
    (starting at a random plate), each well with ``fields_per_well`` field rows."""
    rng = np.random.default_rng(seed)
    rows, used = [], {}
    for moa, cpds in design.items():
        for cpd, n in cpds.items():
            start = int(rng.integers(n_plates))
            for k in range(n):
                plate = f"P{(start + k) % n_plates:02d}"
                used[plate] = used.get(plate, 0) + 1
                well = f"W{used[plate]:03d}"
                for f in range(fields_per_well):
                    rows.append({PLATE: plate, WELL: well, MOA: moa, CPD: cpd, "Metadata_Field": f})
    return pd.DataFrame(rows)


DESIGN = {
    "DMSO": {"DMSO": 40},
    "tubulin": {"taxol": 12, "nocodazole": 11},
    "kinase": {"k1": 8, "k2": 8, "k3": 7},
    "hdac": {"h1": 30},
    "rare": {"r1": 5, "r2": 4},
}


def well_key(df):
    return df[PLATE] + "/" + df[WELL]


def per_well(df, split):
    """One split per well (asserting it is constant within the well)."""
    t = pd.DataFrame({"w": well_key(df), "s": split.to_numpy(), "m": df[MOA].to_numpy(), "p": df[PLATE].to_numpy(),
                      "c": df[CPD].to_numpy()})
    n = t.groupby("w")["s"].nunique()
    assert (n == 1).all(), f"wells split across sets: {list(n.index[n > 1])[:5]}"
    return t.drop_duplicates("w")


def test_well_holdout_keeps_wells_whole_and_fractions_per_moa():
    df = fields(DESIGN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PlateSpreadWarning)
        split = well_holdout_split(df, moa_col=MOA)
    assert split.index.equals(df.index) and set(split) == {"train", "val", "test"}
    w = per_well(df, split)
    for moa, g in w.groupby("m"):
        n = len(g)
        for name, f in zip(("train", "val", "test"), (0.6, 0.1, 0.3)):
            got = int((g["s"] == name).sum())
            assert abs(got - f * n) < 1, (moa, name, got, f * n)
            assert got >= 1, (moa, name)  # every MOA in all three sets


def test_well_holdout_other_fractions_and_columns():
    df = fields({"a": {"x": 20}, "b": {"y": 20}}, n_plates=4).rename(columns={PLATE: "plate"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PlateSpreadWarning)
        split = well_holdout_split(df, moa_col=MOA, well_cols=("plate", WELL), plate_col="plate",
                                   fractions=(0.5, 0.0, 0.5))
    counts = split.groupby([df[MOA], split]).size() / 3
    assert set(split) == {"train", "test"}
    assert (counts == 10).all(), counts


def test_test_wells_cover_as_many_plates_as_possible():
    # "crowded": 20 wells on plate P00 and one on each of P01..P06 (26 wells, 8 test wells): only a spread
    # choice reaches all 7 plates (a random 8 of 26 wells rarely does)
    rows = [{PLATE: "P00", WELL: f"W{k:02d}", MOA: "crowded", CPD: "c"} for k in range(20)]
    rows += [{PLATE: f"P{p:02d}", WELL: "X01", MOA: "crowded", CPD: "c"} for p in range(1, 7)]
    wide = fields({"wide": {"w1": 23}, "wider": {"w2": 60}}, n_plates=23, fields_per_well=1)
    df = pd.concat([pd.DataFrame(rows), wide], ignore_index=True)
    for seed in range(5):
        w = per_well(df, well_holdout_split(df, moa_col=MOA, seed=seed))
        for moa, g in w.groupby("m"):
            test = g[g["s"] == "test"]
            assert test["p"].nunique() == min(len(test), g["p"].nunique()), (seed, moa)
            assert test["p"].nunique() >= 7
        wider = w[(w["m"] == "wider") & (w["s"] == "test")]
        assert wider["p"].value_counts().max() == 1  # 18 test wells on 23 plates: one per plate


def test_warning_names_moas_whose_plates_do_not_allow_seven():
    df = fields({"narrow": {"n": 12}, "wide": {"w": 30}}, n_plates=23)
    narrow = df[MOA] == "narrow"
    df.loc[narrow, PLATE] = np.where(np.arange(narrow.sum()) % 2, "P00", "P01")  # on 2 plates only
    df.loc[narrow, WELL] = [f"N{k // 3:02d}" for k in range(narrow.sum())]
    with pytest.warns(PlateSpreadWarning, match="narrow") as rec:
        split = well_holdout_split(df, moa_col=MOA)
    assert len(rec) == 1 and "'wide'" not in str(rec[0].message)
    per_well(df, split)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlateSpreadWarning)
        well_holdout_split(df[~narrow], moa_col=MOA)  # no warning
        well_holdout_split(df, moa_col=MOA, min_test_plates=2)


def test_splits_are_deterministic_by_seed_and_row_order_free():
    df = fields(DESIGN)
    for fn, kw in ((well_holdout_split, {"min_test_plates": 0}),
                   (compound_holdout_split, {"compound_col": CPD})):
        a = fn(df, moa_col=MOA, seed=3, **kw)
        assert a.equals(fn(df, moa_col=MOA, seed=3, **kw))
        assert not a.equals(fn(df, moa_col=MOA, seed=4, **kw))
        perm = np.random.default_rng(1).permutation(len(df))
        shuffled = fn(df.iloc[perm], moa_col=MOA, seed=3, **kw)
        assert shuffled.reindex(df.index).equals(a)


def test_adding_a_moa_does_not_reshuffle_the_others():
    df = fields(DESIGN)
    more = pd.concat([df, fields({"new": {"n1": 9}}, seed=5).assign(**{PLATE: "Q"}).assign(**{WELL: lambda t: "N" + t.index.astype(str)})], ignore_index=True)
    a = well_holdout_split(df, moa_col=MOA, min_test_plates=0)
    b = well_holdout_split(more, moa_col=MOA, min_test_plates=0)
    assert b.iloc[: len(df)].equals(a)


def test_compound_holdout_one_compound_per_multi_compound_moa():
    df = fields(DESIGN)
    seen = set()
    for seed in range(6):
        split = compound_holdout_split(df, moa_col=MOA, compound_col=CPD, seed=seed)
        w = per_well(df, split)
        for moa, g in w.groupby("m"):
            test_cpds = set(g.loc[g["s"] == "test", "c"])
            if g["c"].nunique() >= 2:
                assert len(test_cpds) == 1, (moa, test_cpds)
                cpd = test_cpds.pop()
                assert (g.loc[g["c"] == cpd, "s"] == "test").all()  # every well of the held-out compound
                seen.add((moa, cpd))
            else:
                assert not test_cpds, moa
            rest = g[g["s"] != "test"]
            n_train = int((rest["s"] == "train").sum())
            assert abs(n_train - 0.7 * len(rest)) < 1, (moa, n_train, len(rest))
            assert set(rest["s"]) == {"train", "val"}
    assert len({c for m, c in seen if m == "kinase"}) >= 2  # the held-out compound is drawn, not fixed


def test_compound_holdout_train_fraction():
    df = fields({"a": {"x": 10, "y": 10}, "b": {"z": 20}})
    split = compound_holdout_split(df, moa_col=MOA, compound_col=CPD, train_fraction=1.0)
    assert set(split) == {"train", "test"}
    assert (split[df[MOA] == "b"] == "train").all()
    with pytest.raises(ValueError, match="train_fraction"):
        compound_holdout_split(df, moa_col=MOA, compound_col=CPD, train_fraction=0)


def test_balance_by_duplication_equal_counts():
    labels = np.array(["a"] * 50 + ["b"] * 7 + ["c"] * 20 + ["DMSO"] * 3)
    df = pd.DataFrame({"y": labels}, index=np.arange(len(labels)) * 10 + 5)  # non-default index
    pos = balance_by_duplication(df, label_col="y", seed=1)
    assert pos.dtype == np.int64 and pos.min() >= 0 and pos.max() < len(df)
    counts = pd.Series(labels[pos]).value_counts()
    assert set(counts) == {50} and len(counts) == 4
    assert set(pos) == set(range(len(df)))  # every row at least once
    per_row = np.bincount(pos, minlength=len(df))
    for lab in ("b", "c", "DMSO"):  # duplicates spread evenly: counts differ by at most one
        c = per_row[labels == lab]
        assert c.max() - c.min() <= 1, lab
    assert np.array_equal(pos, balance_by_duplication(df, label_col="y", seed=1))
    assert not np.array_equal(np.sort(pos), np.sort(balance_by_duplication(df, label_col="y", seed=1, epoch=1)))
    with pytest.raises(ValueError, match="label_col: column 'y' has a missing value"):
        balance_by_duplication(df.assign(y=df["y"].where(df["y"] != "c")), label_col="y")
    with pytest.raises(ValueError, match="label_col: unknown column 'z'"):
        balance_by_duplication(df, label_col="z")


def brute_force_evaluated(df, control="DMSO"):
    out = []
    for i in range(len(df)):
        moa, cpd = df[MOA].iloc[i], df[CPD].iloc[i]
        if cpd == control or moa == control:
            out.append(False)
            continue
        out.append(df.loc[df[MOA] == moa, CPD].nunique() >= 2)
    return np.array(out)


def test_evaluation_rows_drop_dmso_and_single_compound_moas():
    df = fields(DESIGN, fields_per_well=1)
    mask = evaluation_rows(df, moa_col=MOA, compound_col=CPD)
    assert np.array_equal(mask, brute_force_evaluated(df))
    assert set(df.loc[mask, MOA]) == {"tubulin", "kinase", "rare"}
    # after a compound holdout each test MOA has one compound: the filter counts over the whole table
    split = compound_holdout_split(df, moa_col=MOA, compound_col=CPD)
    scored = evaluation_rows(df, moa_col=MOA, compound_col=CPD, split=split)
    assert np.array_equal(scored, brute_force_evaluated(df) & (split == "test").to_numpy())
    assert set(df.loc[scored, MOA]) == {"tubulin", "kinase", "rare"}
    # DMSO's MOA may be missing; a treated row's may not
    assert np.array_equal(evaluation_rows(df.assign(**{MOA: df[MOA].where(df[CPD] != "DMSO")}), moa_col=MOA,
                                          compound_col=CPD), mask)
    with pytest.raises(ValueError, match="control 'DMSO'"):
        evaluation_rows(df[df[CPD] != "DMSO"], moa_col=MOA, compound_col=CPD)
    with pytest.raises(ValueError, match="moa_col: unknown column 'moa'"):
        evaluation_rows(df, moa_col="moa", compound_col=CPD)


def test_bad_input_names_the_column_or_moa():
    df = fields(DESIGN)
    bad = df.copy()
    bad.loc[7, MOA] = np.nan
    for fn, kw in ((well_holdout_split, {}), (compound_holdout_split, {"compound_col": CPD})):
        with pytest.raises(ValueError, match=r"moa_col: column 'Metadata_moa' has a missing value \(NaN\) at row 7"):
            fn(bad, moa_col=MOA, **kw)
        with pytest.raises(ValueError, match="moa_col: unknown column 'moa'"):
            fn(df, moa_col="moa", **kw)
        with pytest.raises(ValueError, match=r"well_cols\[1\]: unknown column 'Well'"):
            fn(df, moa_col=MOA, well_cols=(PLATE, "Well"), **kw)
        one = pd.concat([df, pd.DataFrame([{PLATE: "P00", WELL: "Z99", MOA: "lonely", CPD: "l1"}] * 3)],
                        ignore_index=True)
        with pytest.raises(ValueError, match="moa_col: MOA 'lonely' .*1 well"):
            fn(one, moa_col=MOA, **kw)
        mixed = df.copy()
        mixed.loc[0, MOA] = "kinase" if mixed.loc[0, MOA] != "kinase" else "hdac"
        with pytest.raises(ValueError, match="moa_col: well .* has 2 values of column 'Metadata_moa'"):
            fn(mixed, moa_col=MOA, **kw)
    with pytest.raises(ValueError, match="plate_col: unknown column 'Plate'"):
        well_holdout_split(df, moa_col=MOA, plate_col="Plate")
    with pytest.raises(ValueError, match="fractions"):
        well_holdout_split(df, moa_col=MOA, fractions=(0.6, 0.1, 0.4))
    with pytest.raises(ValueError, match="fractions"):
        well_holdout_split(df, moa_col=MOA, fractions=(1.0, 0.0, 0.0))
    two = df.copy()
    two.loc[two[CPD] == "k1", MOA] = "tubulin"
    two.loc[two.index[two[CPD] == "k1"][:3], MOA] = "hdac"
    two[WELL] = two[WELL] + two.index.astype(str)  # one field per well, so the well check passes
    with pytest.raises(ValueError, match="compound_col: compound 'k1' .* has 2 MOAs"):
        compound_holdout_split(two, moa_col=MOA, compound_col=CPD)


def test_module_does_not_import_torch():
    import subprocess

    code = ("import sys, phenovec.train.moa_splits as m; import pandas as pd; "
            "m.balance_by_duplication(pd.DataFrame({'y': [1, 2, 2]}), label_col='y'); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
