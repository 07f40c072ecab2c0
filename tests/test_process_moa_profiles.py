"""``phenovec.process.moa_profiles`` (MOAProfiler's profiles, digest B4) against a brute-force reference written
here with per-group loops: DMSO-standardisation per plate (mean and ddof-0 SD of the plate's DMSO rows, a zero SD
taken as 1), field -> well median, well -> compound / MOA median without the DMSO wells, in both orders."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from phenovec.process import moa_profiles, normalize
from phenovec.process.recipe import apply_recipe

PLATE, WELL, CPD, MOA = "Metadata_Plate", "Metadata_Well", "Metadata_compound", "Metadata_moa"
COMPOUNDS = {"DMSO": "DMSO", "cA": "M1", "cB": "M1", "cC": "M2", "cD": "M2", "cE": "M3"}


def _fields(seed: int = 0, n_feat: int = 6, fields=(2, 5), plates=3) -> pd.DataFrame:
    """Field rows: every plate has 2 DMSO wells and one well per compound, a few fields each (counts vary, odd
    and even), with a per-plate offset and scale so that standardisation matters."""
    rng = np.random.default_rng(seed)
    rows, X = [], []
    for p in range(plates):
        offset, scale = rng.normal(0, 3, n_feat), rng.uniform(0.5, 3, n_feat)
        wells = ["DMSO", "DMSO", *[c for c in COMPOUNDS if c != "DMSO"]]
        for w, cpd in enumerate(wells):
            effect = rng.normal(0, 2, n_feat) if cpd != "DMSO" else 0.0
            for f in range(int(rng.integers(fields[0], fields[1] + 1))):
                rows.append({PLATE: f"P{p}", WELL: f"W{w:02d}", CPD: cpd, MOA: COMPOUNDS[cpd], "Metadata_Site": f})
                X.append(offset + scale * (effect + rng.normal(0, 1, n_feat) * rng.uniform(0.2, 3)))
    df = pd.DataFrame(rows)
    feats = pd.DataFrame(np.asarray(X), columns=[f"feature_{i}" for i in range(n_feat)])
    return pd.concat([df, feats], axis=1).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _feats(df):
    return [c for c in df.columns if c.startswith("feature_")]


# -------------------------------------------------------------------------------------------- brute force
def _ref_standardize(df: pd.DataFrame, feats) -> pd.DataFrame:
    out = df.copy()
    for p in df[PLATE].unique():
        on_plate = (df[PLATE] == p).to_numpy()
        ctl = on_plate & (df[CPD] == "DMSO").to_numpy()
        x = df.loc[ctl, feats].to_numpy(dtype=float)
        mu = x.mean(axis=0)
        sd = np.sqrt(((x - mu) ** 2).mean(axis=0))
        sd[sd == 0] = 1.0
        out.loc[on_plate, feats] = (df.loc[on_plate, feats].to_numpy(dtype=float) - mu) / sd
    return out


def _ref_median(df: pd.DataFrame, keys, feats) -> pd.DataFrame:
    out = []
    for k in sorted(set(map(tuple, df[keys].to_numpy().tolist()))):
        sel = np.all([(df[c] == v).to_numpy() for c, v in zip(keys, k)], axis=0)
        vals = np.sort(df.loc[sel, feats].to_numpy(dtype=float), axis=0)
        n = len(vals)
        med = vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2
        out.append({**dict(zip(keys, k)), **dict(zip(feats, med))})
    return pd.DataFrame(out)


def _ref(df: pd.DataFrame, level: str, order: str) -> pd.DataFrame:
    feats = _feats(df)
    labels = [PLATE, WELL, CPD, MOA]
    if order == "standardize_then_median":
        wells = _ref_median(_ref_standardize(df, feats), labels, feats)
    else:
        wells = _ref_standardize(_ref_median(df, labels, feats), feats)
    if level == "well":
        return wells
    treated = wells[wells[CPD] != "DMSO"]
    return _ref_median(treated, [CPD, MOA] if level == "compound" else [MOA], feats)


def _compare(got: pd.DataFrame, want: pd.DataFrame, keys) -> None:
    feats = _feats(want)
    got = got.sort_values(keys).reset_index(drop=True)
    want = want.sort_values(keys).reset_index(drop=True)
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(got[keys], want[keys], check_dtype=False)
    np.testing.assert_allclose(got[feats].to_numpy(), want[feats].to_numpy(), rtol=1e-10, atol=1e-12)


# -------------------------------------------------------------------------------------------------- tests
def test_dmso_standardisation_per_plate_is_normalize_with_samples_and_by():
    df = _fields(1)
    feats = _feats(df)
    got = normalize(df, features=feats, samples=f"{CPD} == 'DMSO'", by=PLATE, method="standardize")
    want = _ref_standardize(df, feats)
    np.testing.assert_allclose(got[feats].to_numpy(), want[feats].to_numpy(), rtol=1e-10, atol=1e-12)
    # the plates' DMSO rows end with mean 0 and SD 1
    for _, g in got[got[CPD] == "DMSO"].groupby(PLATE):
        np.testing.assert_allclose(g[feats].mean().to_numpy(), 0, atol=1e-12)
        np.testing.assert_allclose(g[feats].std(ddof=0).to_numpy(), 1, rtol=1e-12)


@pytest.mark.parametrize("order", ["standardize_then_median", "median_then_standardize"])
@pytest.mark.parametrize("level,keys", [("well", [PLATE, WELL]), ("compound", [CPD]), ("moa", [MOA])])
def test_levels_and_orders_match_the_brute_force_reference(level, keys, order):
    df = _fields(2)
    got = moa_profiles(df, level=level, order=order, compound_col=CPD, moa_col=MOA)
    want = _ref(df, level, order)
    _compare(got, want, keys)
    if level != "well":
        assert "DMSO" not in set(got[keys[0]])
        assert len(got) == (5 if level == "compound" else 3)


def test_1280_features_both_orders():
    df = _fields(3, n_feat=1280, plates=2)
    for order in ("standardize_then_median", "median_then_standardize"):
        got = moa_profiles(df, level="compound", order=order, compound_col=CPD, moa_col=MOA)
        assert got.shape == (5, 2 + 1280)
        _compare(got, _ref(df, "compound", order), [CPD])


def test_orders_differ_with_several_fields_per_well_and_agree_with_one():
    several = _fields(4)
    a = moa_profiles(several, order="standardize_then_median", compound_col=CPD, moa_col=MOA)
    b = moa_profiles(several, order="median_then_standardize", compound_col=CPD, moa_col=MOA)
    feats = _feats(several)
    assert np.abs(a[feats].to_numpy() - b[feats].to_numpy()).max() > 1e-3
    one = _fields(4, fields=(1, 1))  # one field per well: the median is the row, the fits coincide
    a = moa_profiles(one, order="standardize_then_median", compound_col=CPD, moa_col=MOA)
    b = moa_profiles(one, order="median_then_standardize", compound_col=CPD, moa_col=MOA)
    np.testing.assert_allclose(a[feats].to_numpy(), b[feats].to_numpy(), rtol=1e-10, atol=1e-12)


def test_dmso_wells_excluded_from_compound_and_moa_but_used_to_standardise():
    df = _fields(5)
    feats = _feats(df)
    base = moa_profiles(df, level="moa", compound_col=CPD, moa_col=MOA)
    assert list(base[MOA]) == ["M1", "M2", "M3"]
    # shifting every DMSO row shifts the standardised treated profiles by exactly -shift / sd (sd unchanged)
    shifted = df.copy()
    shifted.loc[shifted[CPD] == "DMSO", feats] += 10.0
    moved = moa_profiles(shifted, level="moa", compound_col=CPD, moa_col=MOA)
    assert np.all(moved[feats].to_numpy() < base[feats].to_numpy() - 0.1)
    wells = moa_profiles(df, level="well", compound_col=CPD, moa_col=MOA)
    assert (wells[CPD] == "DMSO").sum() == 2 * df[PLATE].nunique()
    assert list(wells.columns[:4]) == [PLATE, WELL, CPD, MOA]


def test_control_col_separate_from_compound_and_feature_inference():
    df = _fields(6)
    df["Metadata_control"] = np.where(df[CPD] == "DMSO", "negcon", "trt")
    got = moa_profiles(df, level="compound", compound_col=CPD, moa_col=MOA, control="negcon",
                       control_col="Metadata_control")
    _compare(got, _ref(df, "compound", "standardize_then_median"), [CPD])


def test_recipe_step_equals_the_call():
    df = _fields(7)
    kwargs = {"level": "moa", "order": "median_then_standardize", "compound_col": CPD, "moa_col": MOA}
    via = apply_recipe({"name": "mp", "steps": [{"moa_profiles": kwargs}]}, df, progress=False)
    direct = moa_profiles(df, **kwargs)
    pd.testing.assert_frame_equal(via.reset_index(drop=True), direct)


def test_errors_name_the_column():
    df = _fields(8)
    no_dmso = df[~((df[PLATE] == "P1") & (df[CPD] == "DMSO"))]
    for order in ("standardize_then_median", "median_then_standardize"):
        with pytest.raises(ValueError, match=r"Metadata_compound == 'DMSO'.*Metadata_Plate='P1'"):
            moa_profiles(no_dmso, order=order, compound_col=CPD, moa_col=MOA)
    with pytest.raises(KeyError, match="moa_col: unknown column 'Metadata_nope'"):
        moa_profiles(df, level="moa", compound_col=CPD, moa_col="Metadata_nope")
    with pytest.raises(KeyError, match="plate_col: unknown column 'Plate'"):
        moa_profiles(df, compound_col=CPD, plate_col="Plate")
    with pytest.raises(ValueError, match="moa_col: level='moa' needs"):
        moa_profiles(df, level="moa", compound_col=CPD)
    with pytest.raises(ValueError, match="control_col"):
        moa_profiles(df)
    bad = df.copy()
    bad.loc[bad[CPD] == "cA", MOA] = np.where(bad.loc[bad[CPD] == "cA", PLATE] == "P0", "M1", "M9")
    with pytest.raises(ValueError, match="column 'Metadata_moa' varies within one compound"):
        moa_profiles(bad, level="compound", compound_col=CPD, moa_col=MOA)
    nan = df.copy()
    nan.loc[nan.index[nan[CPD] == "cB"][0], MOA] = None
    with pytest.raises(ValueError, match="moa_col: column 'Metadata_moa' is missing in 1 row"):
        moa_profiles(nan, level="moa", compound_col=CPD, moa_col=MOA)
    with pytest.raises(ValueError, match="order: 'mean_first' is not one of"):
        moa_profiles(df, order="mean_first", compound_col=CPD)
    with pytest.raises(ValueError, match="level: 'plate' is not one of"):
        moa_profiles(df, level="plate", compound_col=CPD)
