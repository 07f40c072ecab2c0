"""``phenovec.process.consensus`` against pycytominer 1.7.1 ``consensus`` (median, mean, MODZ) on the same input.

Inputs: BBBC021 per-well profiles grouped by compound + concentration (330 DMSO wells in one group, 2-3 replicate
wells otherwise) and LINCS plate SQ00015054 grouped by Metadata_broad_sample (6-24 wells), each edited to add
single-replicate groups, a missing group key, NaN feature values (scattered, a whole feature within a group, a
whole replicate), a constant replicate and +-inf. Observed: median identical, mean and MODZ within 4e-15 absolute
of the peer (asserted at 1e-9).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pycytominer
import pytest

from phenovec.process.aggregate import group_keys
from phenovec.process.consensus import consensus, modz, modz_weights


def _peer(df, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pycytominer.consensus(df, **kw)


def _same(peer: pd.DataFrame, ours: pd.DataFrame) -> None:
    assert list(ours.columns) == list(peer.columns)
    pd.testing.assert_frame_equal(ours, peer, check_exact=False, rtol=1e-9, atol=1e-9)


def _edit(df: pd.DataFrame, reps: list[str], feats: list[str], seed: int) -> pd.DataFrame:
    """Single-replicate groups, a NaN key, NaN values, a constant replicate, +-inf."""
    rng = np.random.default_rng(seed)
    sizes = df.groupby(reps, dropna=False).size()
    multi = sizes[sizes >= 3].index[:6]
    drop = []
    for key in multi[:3]:  # three groups reduced to one replicate
        rows = df.index[(df[reps] == pd.Series(key, index=reps)).all(axis=1)]
        drop += list(rows[1:])
    df = df.drop(index=drop).reset_index(drop=True)
    x = df[feats].to_numpy(dtype=float)
    x[rng.random(x.shape) < 0.002] = np.nan
    df[feats] = x

    def rows_of(key):
        return df.index[(df[reps] == pd.Series(key, index=reps)).all(axis=1)]

    r = rows_of(multi[3])
    df.loc[r, feats[4]] = np.nan  # a feature missing in every replicate of a group -> 0.0, as the peer
    df.loc[r[0], feats[5:40]] = np.nan
    r = rows_of(multi[4])
    df.loc[r[0], feats] = np.nan  # a whole replicate missing: NaN correlations, NaN weight
    r = rows_of(multi[5])
    df.loc[r[0], feats[6]] = np.inf
    df.loc[r[1], feats[7]] = -np.inf
    df.loc[r[2], feats] = 2.5  # a constant replicate: NaN correlations, NaN weight
    df.loc[rows_of(multi[0])[0], feats[8:12]] = np.nan  # NaN in a single-replicate group -> 0.0
    df[reps[0]] = df[reps[0]].astype(object)
    df.loc[df.index[[0, 1, 2]], reps[0]] = np.nan  # missing group key, kept as its own group
    return df


@pytest.fixture(scope="module")
def bbbc(bbbc021) -> tuple[pd.DataFrame, list[str], list[str]]:
    reps = ["Metadata_compound", "Metadata_concentration"]
    feats = [c for c in bbbc021.columns if c.startswith(("Cells_", "Cytoplasm_", "Nuclei_"))]
    # 60 of the 330 DMSO wells: still one large group, but the peer's pairwise pandas path stays fast
    dmso = np.flatnonzero(bbbc021["Metadata_compound"].eq("DMSO").to_numpy())
    df = bbbc021.drop(index=bbbc021.index[dmso[60:]]).reset_index(drop=True)
    return _edit(df, reps, feats, seed=0), reps, feats


@pytest.fixture(scope="module")
def lincs(lincs_plate) -> tuple[pd.DataFrame, list[str], list[str]]:
    reps = ["Metadata_broad_sample"]
    feats = [c for c in lincs_plate.columns if not c.startswith("Metadata_")]
    return _edit(lincs_plate, reps, feats, seed=1), reps, feats


@pytest.mark.parametrize("data", ["bbbc", "lincs"])
@pytest.mark.parametrize("operation,method", [("median", None), ("mean", None), ("modz", "spearman"),
                                              ("modz", "pearson")])
def test_matches_peer(request, data, operation, method):
    df, reps, feats = request.getfixturevalue(data)
    args = {"method": method} if method else {"method": "spearman"}
    peer = _peer(df, replicate_columns=reps, operation=operation, features=feats, modz_args=args)
    ours = consensus(df, replicate_columns=reps, operation=operation, features=feats, modz_args=args)
    _same(peer, ours)
    sizes = df.groupby(reps, dropna=False).size()
    assert len(ours) == len(sizes) and (sizes == 1).sum() >= 3 and ours[reps[0]].isna().sum() >= 1
    if operation == "modz":
        # the data exercise unequal weights, NaN weights and the 0.0 of all-NaN features
        pos, keys = group_keys(df[reps])
        w = modz_weights(df[feats].to_numpy(dtype=float), pos, len(keys), method=method)
        by = pd.Series(w).groupby(pos)
        assert (by.max() - by.min()).max() > 1e-3 and np.isnan(w).any()
        assert (ours[feats].to_numpy() == 0.0).sum() >= 5


def test_modz_options_and_kendall(lincs):
    df, reps, feats = lincs
    args = {"method": "kendall", "min_weight": 0.2, "precision": 2}
    _same(_peer(df, replicate_columns=reps, operation="modz", features=feats, modz_args=args),
          consensus(df, replicate_columns=reps, operation="modz", features=feats, modz_args=args))
    # min_weight 0 and every correlation negative or missing: equal weights (the peer's zero-sum branch)
    args = {"method": "pearson", "min_weight": 0.0}
    two = df[df[reps[0]].isin(df[reps[0]].dropna().unique()[:5])].copy()
    two.loc[two.index[1], feats] = -two.loc[two.index[0], feats].to_numpy()
    _same(_peer(two, replicate_columns=reps, operation="modz", features=feats, modz_args=args),
          consensus(two, replicate_columns=reps, operation="modz", features=feats, modz_args=args))


def test_modz_function_and_inferred_features(bbbc021):
    reps = ["Metadata_compound", "Metadata_concentration"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = pycytominer.cyto_utils.modz(bbbc021, replicate_columns=reps)
    _same(peer, modz(bbbc021, replicate_columns=reps))
    _same(_peer(bbbc021, replicate_columns=reps), consensus(bbbc021, replicate_columns=reps))


def test_output_file(lincs, tmp_path):
    df, reps, feats = lincs
    path = consensus(df, replicate_columns=reps, operation="modz", features=feats, output_file=tmp_path / "c.parquet")
    assert path == str(tmp_path / "c.parquet")
    back = pd.read_parquet(path)
    back[reps] = back[reps].where(back[reps].notna(), np.nan)  # Parquet gives None for the missing key
    _same(_peer(df, replicate_columns=reps, operation="modz", features=feats), back)


def test_bad_input(lincs):
    df, reps, feats = lincs
    with pytest.raises(KeyError, match="Metadata_nope"):
        consensus(df, replicate_columns=["Metadata_nope"], operation="modz")
    with pytest.raises(KeyError, match="Metadata_nope"):
        consensus(df, replicate_columns=["Metadata_nope"], operation="median")
    with pytest.raises(ValueError, match="operation 'max' not supported"):
        consensus(df, replicate_columns=reps, operation="max")
    with pytest.raises(ValueError, match="method 'cosine' not supported"):
        consensus(df, replicate_columns=reps, operation="modz", modz_args={"method": "cosine"})
    bad = df.copy()
    bad[feats[0]] = bad[feats[0]].astype(object)
    bad.loc[5, feats[0]] = "oops"
    with pytest.raises(ValueError, match=rf"'{feats[0]}'.*row 5.*'oops'"):
        consensus(bad, replicate_columns=reps, operation="modz", features=feats)
    with pytest.raises(ValueError, match="both a stratum and a feature"):
        consensus(df, replicate_columns=[feats[0]], operation="modz", features=feats)


def test_pairwise_correlations_follow_pandas():
    """The NaN/inf path equals pandas ``DataFrame.corr`` (which the peer calls), ties, -inf rank quirk and all."""
    from phenovec.process.consensus import _group_corr_with_missing, _normalized_rows

    rng = np.random.default_rng(0)
    for trial in range(150):
        m, d = int(rng.integers(2, 12)), int(rng.integers(3, 60))
        g = rng.integers(0, 6, (m, d)).astype(float) if trial % 2 else rng.standard_normal((m, d))
        g[rng.random((m, d)) < (0.01, 0.03, 0.3)[trial % 3]] = np.nan
        if trial % 4 == 0:
            g[rng.random((m, d)) < 0.03] = np.inf
        if trial % 5 == 0:
            g[rng.random((m, d)) < 0.03] = -np.inf
            g[1, np.isneginf(g[0])] = np.nan  # same missing pattern as a row with -inf: pandas keeps full ranks
        if trial % 7 == 0:
            g[0] = np.nan
        for method in ("spearman", "pearson"):
            ours = _group_corr_with_missing(g, _normalized_rows(g, method), method)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peer = pd.DataFrame(g.T).corr(method=method).to_numpy().copy()
            np.fill_diagonal(ours, np.nan)
            np.fill_diagonal(peer, np.nan)
            np.testing.assert_allclose(ours, peer, rtol=0, atol=1e-12, err_msg=f"trial {trial} {method}")


def test_one_feature_name_and_replicate_column_errors():
    """pycytominer takes one feature as a string (modz and aggregate paths); an unknown replicate column is named as
    replicate_columns (it was 'strata', aggregate's word)."""
    from phenovec.process.consensus import consensus

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(40, 3)), columns=["Cells_a", "Cells_b", "Cells_c"])
    df.insert(0, "Metadata_moa", np.repeat(["m1", "m2"], 20))
    for op in ("median", "modz"):
        ours = consensus(df, replicate_columns=["Metadata_moa"], operation=op, features="Cells_a")
        peer = pycytominer.consensus(df, replicate_columns=["Metadata_moa"], operation=op, features="Cells_a")
        assert list(ours.columns) == list(peer.columns) == ["Metadata_moa", "Cells_a"]
        np.testing.assert_allclose(ours["Cells_a"].to_numpy(), peer["Cells_a"].to_numpy(), rtol=1e-9)
    with pytest.raises(KeyError, match="replicate_columns: unknown column 'Metadata_nope'"):
        consensus(df, replicate_columns=["Metadata_nope"])
