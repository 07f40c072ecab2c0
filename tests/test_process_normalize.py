"""phenovec.process.normalize against pycytominer 1.7.1 itself (same inputs), saved fits, the streamed mode and
the exact streamed quantiles.

Observed (numpy 2.4, scikit-learn 1.9.1, scipy 1.17.1): every method x samples on BBBC021 and the LINCS plate is
bit-identical to pycytominer (max abs difference 0.0); the assertions allow 1e-9 relative (+1e-12 absolute).
Streamed robustize / mad_robustize equal the in-memory result exactly, standardize to 1e-12 relative.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import pycytominer
from phenovec.process.column_quantiles import (
    ColumnRange,
    QuantileSelector,
    float_keys,
    keys_to_float,
    nan_percentiles,
    nan_quantiles,
)
from phenovec.process.normalize import NormalizeFit, normalize, normalize_stream

METHODS = ["standardize", "robustize", "mad_robustize", "inverse_normal", "spherize"]
CONTROL = {"bbbc021": "Metadata_compound == 'DMSO'", "lincs_plate": "Metadata_broad_sample == 'DMSO'"}
RTOL, ATOL = 1e-9, 1e-12


def peer(df, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pycytominer.normalize(df.copy(), **kw)


def ours(df, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SpherizeWarning (n <= d), as pycytominer's silent behaviour
        return normalize(df, **kw)


def cp_features(df):
    return [c for c in df.columns if c.startswith(("Cells_", "Cytoplasm_", "Nuclei_"))]


def assert_same_table(got: pd.DataFrame, ref: pd.DataFrame, feats=None):
    assert list(got.columns) == list(ref.columns)
    assert got.index.equals(ref.index)
    feats = feats if feats is not None else cp_features(ref)
    other = [c for c in ref.columns if c not in set(feats)]
    pd.testing.assert_frame_equal(got[other], ref[other])
    a, r = got[feats].to_numpy(dtype=np.float64), ref[feats].to_numpy(dtype=np.float64)
    assert_array_equal(np.isnan(a), np.isnan(r))
    assert_allclose(a, r, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------------------ pycytominer


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dataset", ["bbbc021", "lincs_plate"])
@pytest.mark.parametrize("which", ["all", "control"])
def test_equals_pycytominer(request, dataset, method, which):
    df = request.getfixturevalue(dataset)
    samples = "all" if which == "all" else CONTROL[dataset]
    got = ours(df, method=method, samples=samples)
    ref = peer(df, method=method, samples=samples)
    assert_same_table(got, ref)
    assert np.isfinite(got[cp_features(got)].to_numpy()).all()


@pytest.mark.parametrize("method", ["standardize", "robustize", "mad_robustize", "inverse_normal"])
def test_by_plate_equals_a_loop_of_pycytominer_calls(bbbc021, method):
    # 14 of the 55 plates keep the peer's loop (0.2 s a call) short; plates interleaved: groups need not be contiguous
    plates = sorted(bbbc021["Metadata_Plate"].unique())[::4]
    df = bbbc021[bbbc021["Metadata_Plate"].isin(plates)].sample(frac=1.0, random_state=0)
    q = CONTROL["bbbc021"]
    got, fit = ours(df, method=method, samples=q, by="Metadata_Plate", return_fit=True)
    parts = [peer(g, method=method, samples=q) for _, g in df.groupby("Metadata_Plate", sort=False)]
    ref = pd.concat(parts).loc[df.index]
    assert len(fit.keys) == 14 and fit.n_fitted.min() >= 2
    assert_same_table(got, ref)
    # per-plate fitting differs from one global fit
    assert not np.allclose(got[cp_features(got)], ours(df, method=method, samples=q)[cp_features(got)])


def test_by_two_columns_and_nan_group_keys(bbbc021):
    df = bbbc021.copy()
    plates = df["Metadata_Plate"].unique()
    df["Metadata_Batch"] = df["Metadata_Plate"].str.split("_").str[0]
    df.loc[df["Metadata_Plate"] == plates[0], "Metadata_Plate"] = np.nan  # one plate's key is missing
    q = CONTROL["bbbc021"]
    got, fit = ours(df, method="mad_robustize", samples=q, by=["Metadata_Batch", "Metadata_Plate"], return_fit=True)
    assert len(fit.keys) == 55 and sum(k[1] is None for k in fit.keys) == 1
    nan_rows = df["Metadata_Plate"].isna()
    for rows in (nan_rows, df["Metadata_Plate"] == plates[1]):
        assert_same_table(got[rows], peer(df[rows], method="mad_robustize", samples=q))


def test_group_of_one_fitted_row_follows_pycytominer(bbbc021):
    df = bbbc021.copy()
    plate = df["Metadata_Plate"].iloc[0]
    one = df.index[df["Metadata_Plate"] == plate][0]
    q = f"Metadata_compound == 'DMSO' or index == {one}"
    df.loc[df["Metadata_Plate"] == plate, "Metadata_compound"] = "x"  # that plate: only row `one` is fitted
    got = ours(df, method="standardize", samples=q, by="Metadata_Plate")
    rows = df["Metadata_Plate"] == plate
    assert_same_table(got[rows], peer(df[rows], method="standardize", samples=q))
    assert (got.loc[one, cp_features(got)] == 0).all()  # x - x, scale 1 (sklearn's constant-feature rule)


def test_nan_features_are_ignored_when_fitting_and_kept(bbbc021):
    df = bbbc021.copy()
    feats = cp_features(df)
    rng = np.random.default_rng(1)
    for j in rng.choice(len(feats), 40, replace=False):
        df.loc[df.index[rng.choice(len(df), 25, replace=False)], feats[j]] = np.nan
    df.loc[:, feats[3]] = np.nan  # an all-NaN column: NaN out, as sklearn
    for method in ["standardize", "robustize", "mad_robustize", "inverse_normal"]:
        for samples in ["all", CONTROL["bbbc021"]]:
            got = ours(df, method=method, samples=samples)
            assert_same_table(got, peer(df, method=method, samples=samples))
            assert got[feats[3]].isna().all()
            assert_array_equal(got[feats].isna().to_numpy(), df[feats].isna().to_numpy())
    with pytest.raises(ValueError, match=r"spherize cannot use missing values: feature column .* is NaN at row"):
        normalize(df, method="spherize")


# ------------------------------------------------------------------------------------------ bad input


def test_bad_input_is_named(lincs_plate):
    df = lincs_plate.copy()
    feats = cp_features(df)
    with pytest.raises(KeyError, match="Cells_nope"):
        normalize(df, features=feats[:3] + ["Cells_nope"])
    bad = df.copy()
    bad[feats[5]] = bad[feats[5]].astype(object)
    bad.loc[7, feats[5]] = "oops"
    with pytest.raises(ValueError, match=rf"{feats[5]}.*row 7.*'oops'"):
        normalize(bad)
    with pytest.raises(ValueError, match=r"samples query .*'nothing'.* matches no row"):
        normalize(df, samples="Metadata_broad_sample == 'nothing'")
    with pytest.raises(ValueError, match="unknown normalize method 'zscore'"):
        normalize(df, method="zscore")
    inf = df.copy()
    inf.loc[3, feats[2]] = np.inf
    with pytest.raises(ValueError, match=rf"{feats[2]}.*inf at row 3"):
        normalize(inf)
    with pytest.raises(KeyError, match="Metadata_nope"):
        normalize(df, by="Metadata_nope")


def test_samples_query_empty_within_one_group(bbbc021):
    df = bbbc021.copy()
    plate = df["Metadata_Plate"].iloc[0]
    df.loc[(df["Metadata_Plate"] == plate) & (df["Metadata_compound"] == "DMSO"), "Metadata_compound"] = "gone"
    q = CONTROL["bbbc021"]
    with pytest.raises(ValueError, match=rf"matches no row in group Metadata_Plate='{plate}'") as e:
        normalize(df, samples=q, by="Metadata_Plate")
    assert q in str(e.value)
    normalize(df, samples=q)  # fine without groups


# ------------------------------------------------------------------------------------------ saved fits


@pytest.mark.parametrize("method", METHODS)
def test_fit_save_load_round_trip(bbbc021, tmp_path, method):
    by = None if method == "spherize" else "Metadata_Plate"
    q = CONTROL["bbbc021"] if method != "spherize" else "all"
    feats = cp_features(bbbc021)[:: 4 if method == "spherize" else 1]  # a smaller SVD keeps the test quick
    out, fit = ours(bbbc021, features=feats, method=method, samples=q, by=by, return_fit=True)
    path = fit.save(tmp_path / "fit.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.npz"]  # no temporary left behind
    loaded = NormalizeFit.load(path)
    assert (loaded.method, loaded.features, loaded.by, loaded.keys) == (fit.method, fit.features, fit.by, fit.keys)
    pd.testing.assert_frame_equal(ours(bbbc021, fit=path), out)
    pd.testing.assert_frame_equal(ours(bbbc021, fit=loaded), out)
    with pytest.raises(ValueError, match="features differ from the saved fit"):
        normalize(bbbc021, features=feats[:3], fit=loaded)
    # new rows (a subset, shuffled) get exactly the rows of the original output
    sub = bbbc021.sample(100, random_state=2)
    pd.testing.assert_frame_equal(loaded.transform(sub), out.loc[sub.index])


def test_fit_rejects_unfitted_groups(bbbc021):
    df = bbbc021
    keep = df["Metadata_Plate"] != df["Metadata_Plate"].iloc[0]
    _, fit = normalize(df[keep], by="Metadata_Plate", return_fit=True)
    with pytest.raises(KeyError, match=rf"Metadata_Plate='{df['Metadata_Plate'].iloc[0]}' was not fitted"):
        fit.transform(df)


def test_output_file(bbbc021, tmp_path):
    path = normalize(bbbc021, method="robustize", output_file=tmp_path / "n.csv.gz")
    assert path == str(tmp_path / "n.csv.gz")
    back = pd.read_csv(path)
    ref = peer(bbbc021, method="robustize")
    assert_allclose(back[cp_features(ref)].to_numpy(), ref[cp_features(ref)].to_numpy(), rtol=1e-12)


# ------------------------------------------------------------------------------------------ streaming


def synthetic_plates(n=3000, d=12, plates=5, seed=0) -> pd.DataFrame:
    """Heavy tails (Cauchy), ties (rounded, two-valued and near-constant columns), NaN, interleaved plates."""
    rng = np.random.default_rng(seed)
    x = rng.standard_cauchy((n, d)) * 100
    x[:, 1] = np.round(x[:, 1] / 100)
    x[:, 2] = np.where(rng.random(n) < 0.8, 3.0, 4.0)
    x[:, 3] = rng.lognormal(0, 3, n)
    x[:, 4] = 7.0
    x[rng.random((n, d)) < 0.03] = np.nan
    df = pd.DataFrame(x, columns=[f"Cells_f{j}" for j in range(d)])
    df.insert(0, "Metadata_Plate", rng.choice([f"P{i}" for i in range(plates)], n))
    df.insert(1, "Metadata_treatment", np.where(rng.random(n) < 0.3, "DMSO", "drug"))
    df.insert(2, "Image_Count_Cells", rng.integers(50, 500, n))
    return df


@pytest.mark.parametrize("method", ["standardize", "robustize", "mad_robustize"])
@pytest.mark.parametrize("samples", ["all", "Metadata_treatment == 'DMSO'"])
def test_stream_equals_in_memory(tmp_path, method, samples):
    df = synthetic_plates()
    src = tmp_path / "in.parquet"
    df.to_parquet(src, row_group_size=700)
    out = tmp_path / "out.parquet"
    path, fit = normalize_stream(src, out, method=method, samples=samples, by="Metadata_Plate", batch_rows=257,
                                 return_fit=True, quantile_options={"bits": 3, "collect_limit": 5})
    assert path == str(out) and sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "out.parquet"]
    got = pd.read_parquet(out)
    ref, mfit = normalize(df, method=method, samples=samples, by="Metadata_Plate", return_fit=True)
    assert list(got.columns) == list(ref.columns)
    pd.testing.assert_frame_equal(got.drop(columns=cp_features(df)), ref.drop(columns=cp_features(df)))
    order = [fit.keys.index(k) for k in mfit.keys]
    if method == "standardize":
        assert fit.passes == 1
        assert_allclose(fit.loc[order], mfit.loc, rtol=1e-12)
        assert_allclose(fit.scale[order], mfit.scale, rtol=1e-12)
        assert_allclose(got[cp_features(df)], ref[cp_features(df)], rtol=1e-9, atol=1e-9)
    else:
        assert fit.passes > 4  # counting pass + several histogram levels (+ the MAD's own) before collecting
        assert_array_equal(fit.loc[order], mfit.loc)
        assert_array_equal(fit.scale[order], mfit.scale)
        assert_array_equal(got[cp_features(df)].to_numpy(), ref[cp_features(df)].to_numpy())
    assert_array_equal(fit.n_fitted[order], mfit.n_fitted)


def test_stream_real_plates_equal_pycytominer(bbbc021, tmp_path):
    plates = sorted(bbbc021["Metadata_Plate"].unique())[1::4][:12]
    df = bbbc021[bbbc021["Metadata_Plate"].isin(plates)].sample(frac=1.0, random_state=3).reset_index(drop=True)
    src = tmp_path / "bbbc021.parquet"
    df.to_parquet(src)
    q = CONTROL["bbbc021"]
    normalize_stream(src, tmp_path / "o.parquet", method="mad_robustize", samples=q, by="Metadata_Plate",
                     batch_rows=100)
    got = pd.read_parquet(tmp_path / "o.parquet")
    ref = pd.concat([peer(g, method="mad_robustize", samples=q) for _, g in df.groupby("Metadata_Plate")]).loc[df.index]
    assert_same_table(got, ref)


def test_stream_applies_any_saved_fit_and_refuses_unstreamable_fits(bbbc021, tmp_path):
    src = tmp_path / "b.parquet"
    bbbc021.reset_index(drop=True).to_parquet(src)
    feats = cp_features(bbbc021)[::4]
    for method in ["inverse_normal", "spherize"]:
        ref, fit = ours(bbbc021.reset_index(drop=True), features=feats, method=method, return_fit=True)
        normalize_stream(src, tmp_path / "o.parquet", fit=fit, batch_rows=111)
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "o.parquet"), ref)
        with pytest.raises(ValueError, match="normalize_stream fits"):
            normalize_stream(src, tmp_path / "o2.parquet", method=method)


def test_stream_failure_leaves_no_output(tmp_path):
    df = synthetic_plates(n=1000)
    df["Cells_f5"] = df["Cells_f5"].astype(object)
    df.loc[900, "Cells_f5"] = "bad"
    src = tmp_path / "in.csv"
    df.to_csv(src, index=False)
    with pytest.raises(ValueError, match=r"Cells_f5.*row 900.*'bad'"):
        normalize_stream(src, tmp_path / "out.parquet", batch_rows=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
    good = synthetic_plates(n=1000)
    good.loc[good["Metadata_Plate"] == "P2", "Metadata_treatment"] = "drug"
    good.to_parquet(tmp_path / "g.parquet")
    with pytest.raises(ValueError, match=r"matches no row in group Metadata_Plate='P2'"):
        normalize_stream(tmp_path / "g.parquet", tmp_path / "out.parquet", samples="Metadata_treatment == 'DMSO'",
                         by="Metadata_Plate", method="robustize", batch_rows=100)
    assert not (tmp_path / "out.parquet").exists()


# ------------------------------------------------------------------------------------------ column_quantiles


def test_float_keys_order_and_round_trip():
    v = np.array([-np.inf, -1e300, -1.0, -5e-324, -0.0, 0.0, 5e-324, 1.0, 1e300, np.inf])
    k = float_keys(v)
    assert (np.diff(k.astype(object)) >= 0).all() and k[4] == k[5]
    assert_array_equal(keys_to_float(k), v + 0.0)


@pytest.mark.parametrize("opts", [{"bits": 2, "collect_limit": 3}, {"bits": 16, "collect_limit": 1}, {}])
def test_streamed_quantiles_are_numpys_bit_for_bit(opts):
    rng = np.random.default_rng(0)
    n, d, G = 6000, 7, 4
    x = rng.standard_cauchy((n, d)) * 10
    x[:, 1] = np.round(x[:, 1])
    x[:, 2] = 3.0
    x[::7, 2] = 4.0
    x[rng.random((n, d)) < 0.05] = np.nan
    x[:, 3] = np.nan
    x[:5, 3] = [1, -0.0, 0.0, 2, -1]  # groups with 0..5 values; all-NaN groups give NaN
    x[:, 4] = rng.choice([1e300, -1e-300, 0.0, np.inf, -np.inf], n)
    codes = rng.integers(0, G, n)
    qs = ["median", 0.25, 0.75, 0.0, 1.0, 0.1]
    rng_ = ColumnRange(d)
    for i in range(0, n, 1000):
        rng_.update(x[i : i + 1000], codes[i : i + 1000])
    sel = QuantileSelector(rng_.count, rng_.min, rng_.max, qs, **opts)
    while not sel.done:
        assert sel.passes < 70
        perm = rng.permutation(n)  # each pass may see the rows in another order and batching
        for i in range(0, n, 777):
            sel.update(x[perm[i : i + 777]], codes[perm[i : i + 777]])
        sel.end_pass()
    if opts.get("bits") == 2:
        assert sel.levels > 10
    got = sel.values()
    for g in range(G):
        with np.errstate(invalid="ignore"):
            assert_array_equal(got[:, g], nan_quantiles(x[codes == g], qs))


def test_lerp_is_numpys_interpolation():
    from phenovec.process.column_quantiles import lerp

    rng = np.random.default_rng(5)
    a = rng.standard_normal(4000) * 10.0 ** rng.integers(-5, 5, 4000)
    b = a + np.abs(rng.standard_normal(4000)) * 10.0 ** rng.integers(-5, 5, 4000)
    for t in (0.1, 0.25, 0.5, 0.75, 0.9):
        ref = np.array([np.percentile([x, y], 100 * t) for x, y in zip(a, b)])
        assert_array_equal(lerp(a, b, np.full_like(a, t)), ref)
        if t >= 0.5:  # the second branch of numpy's _lerp matters: the one-sided formula differs somewhere
            assert (a + (b - a) * t != ref).any()


def test_in_memory_quantiles_are_numpys_bit_for_bit():
    rng = np.random.default_rng(7)
    for n in (1, 2, 5, 600, 1501):
        x = rng.standard_cauchy((n, 6))
        x[:, 1] = np.round(x[:, 1])
        x[:, 2] = rng.choice([-np.inf, -0.0, 0.0, 2.0, np.inf], n)
        x[rng.random((n, 6)) < 0.1] = np.nan
        x[:, 3] = np.nan
        qs = ["median", 0.25, 0.75, 0.0, 1.0, 1 / 3]
        got = nan_quantiles(x, qs)
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            for j in range(x.shape[1]):  # per column, as sklearn's RobustScaler calls numpy
                assert_array_equal(got[0, j], np.nanmedian(x[:, j]))
                assert_array_equal(got[1:, j], np.nanquantile(x[:, j], qs[1:]))
                assert_array_equal(got[1:3, j], np.nanpercentile(x[:, j], [25, 75]))  # RobustScaler's call
            assert_array_equal(got[0], np.nanmedian(x, axis=0))  # and as RobustScaler's centre (2-D)
            refs = np.linspace(0, 1, 37) * 100  # QuantileTransformer's percentiles
            assert_array_equal(nan_percentiles(x, refs), np.nanpercentile(x, refs, axis=0))
