"""phenovec.process.feature_select against pycytominer 1.7.1 itself, run on the same inputs.

Every equivalence test requires the identical output frame (``assert_frame_equal``: same kept columns in the
same order, same values) or the identical excluded set. Data: BBBC021 wells (raw per-well means: outliers,
low-variance and highly correlated features), the LINCS plate SQ00015054 (normalized), and single cells merged
from the JUMP Target2 site CSVs (Cells + Cytoplasm + Nuclei of sites A01-1 and A02-1: 125 cells x 5,792
features with constant and duplicated columns; a copy gets NaN injected the way missing objects look:
all Nuclei_* features of 4 cells and 10% of the cells in 40 other features).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pycytominer  # noqa: F401  (sets pandas copy_on_write as in every pycytominer run)
import pytest
from pycytominer import feature_select as peer_feature_select
from pycytominer.cyto_utils import drop_outlier_features as peer_drop_outliers
from pycytominer.cyto_utils import get_blocklist_features as peer_blocklist
from pycytominer.operations import correlation_threshold as peer_corr
from pycytominer.operations import frequency_threshold as peer_freq
from pycytominer.operations import get_na_columns as peer_na
from pycytominer.operations import noise_removal as peer_noise
from pycytominer.operations import variance_threshold as peer_var

from phenovec.process.blocklist import REGISTRY, get_blocklist_features, load_blocklist
from phenovec.process.correlation_threshold import (
    abs_column_sums,
    correlation_exclusions,
    correlation_threshold,
    kendall_matrix,
    pandas_nancorr,
    peer_corrcoef,
    spearman_matrix,
)
from phenovec.process.feature_select import (
    drop_outlier_features,
    feature_matrix,
    feature_select,
    frequency_threshold,
    get_na_columns,
    noise_removal,
    variance_threshold,
)

from conftest import SHARED_DATA

TARGET2 = (SHARED_DATA / "pycytominer-target2-single-cell" / "analysis" / "2021_04_20_Target2" / "BR00121431"
           / "analysis")
CONSENSUS_BLOCKLIST = SHARED_DATA / "lincs-cell-painting-metadata" / "consensus_blocklist.txt"
CP = ("Cells", "Nuclei", "Cytoplasm")


def _peer(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peer_feature_select(*args, **kwargs)


def _ours(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return feature_select(*args, **kwargs)


def _feats(df):
    return [c for c in df.columns if c.startswith(CP)]


@pytest.fixture(scope="module")
def lincs() -> pd.DataFrame:
    """LINCS plate SQ00015054 as shipped (384 wells, 454 features, 24 DMSO wells)."""
    p = SHARED_DATA / "cytominer-eval-lincs-plate" / "SQ00015054_normalized_feature_select.csv.gz"
    assert p.exists(), p
    return pd.read_csv(p)


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    """Single cells of sites A01-1 and A02-1: compartments merged on ImageNumber + ObjectNumber."""
    parts = []
    for site in ("A01-1", "A02-1"):
        merged = None
        for comp in ("Cells", "Cytoplasm", "Nuclei"):
            p = TARGET2 / f"BR00121431-{site}" / f"{comp}.csv"
            assert p.exists(), p
            t = pd.read_csv(p)
            t = t.rename(columns={c: f"{comp}_{c}" for c in t.columns if c not in ("ImageNumber", "ObjectNumber")})
            merged = t if merged is None else merged.merge(t, on=["ImageNumber", "ObjectNumber"], how="inner")
        meta = pd.DataFrame({"Metadata_Well": site.split("-")[0], "Metadata_Site": site}, index=merged.index)
        parts.append(pd.concat([meta, merged], axis=1))
    df = pd.concat(parts, ignore_index=True)
    df = df.rename(columns={"ImageNumber": "Metadata_ImageNumber", "ObjectNumber": "Metadata_ObjectNumber"}).copy()
    assert 100 <= len(df) <= 150 and len(_feats(df)) > 5000, df.shape
    return df


@pytest.fixture(scope="module")
def cells_nan(cells) -> pd.DataFrame:
    """``cells`` with missing values: all Nuclei_* of 4 cells, 10% of cells in 40 other features."""
    df = cells.copy()
    rng = np.random.default_rng(7)
    nuc = [c for c in df.columns if c.startswith("Nuclei_")]
    df.loc[rng.choice(len(df), 4, replace=False), nuc] = np.nan
    other = rng.choice([c for c in _feats(df) if not c.startswith("Nuclei_")], 40, replace=False)
    for c in other:
        df.loc[rng.choice(len(df), len(df) // 10, replace=False), c] = np.nan
    return df.copy()


@pytest.fixture(scope="module")
def cells_small(cells_nan) -> pd.DataFrame:
    """A 1,200-feature slice of ``cells_nan`` (keeps the peer's pandas NaN path at test speed)."""
    f = _feats(cells_nan)
    keep = f[:400] + [c for c in f if c.startswith("Nuclei_")][:400] + f[-400:]
    keep = list(dict.fromkeys(keep))
    return cells_nan[["Metadata_Well", "Metadata_Site"] + keep]


def _dataset(request, name):
    return request.getfixturevalue(name)


CONTROL = {"bbbc021": "Metadata_moa == 'DMSO'", "lincs": "Metadata_broad_sample == 'DMSO'",
           "cells_small": "Metadata_Well == 'A01'", "cells_nan": "Metadata_Well == 'A01'"}
CORR = {"bbbc021": 0.9, "lincs": 0.6, "cells_small": 0.9, "cells_nan": 0.9}
GROUPS = {"bbbc021": "Metadata_compound", "lincs": "Metadata_broad_sample", "cells_small": "Metadata_Site",
          "cells_nan": "Metadata_Site"}


def _noise_cutoff(df, samples, groups):
    """A cutoff in the middle of the peer-style per-feature mean within-group sd (pandas, not phenovec)."""
    sub = df if samples == "all" else df.query(samples)
    m = sub[_feats(df)].assign(g=sub[groups].to_numpy()).groupby("g").std(ddof=0).mean()
    return float(np.nanmedian(m.to_numpy()))


# ------------------------------------------------------------------------------------ each op, whole frame


OPS = ["variance_threshold", "frequency_threshold", "correlation_threshold", "drop_na_columns", "drop_outliers",
       "blocklist", "noise_removal"]


@pytest.mark.parametrize("name", ["bbbc021", "lincs", "cells_nan"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("control", [False, True])
def test_single_operation_matches_peer(request, name, op, control):
    df = _dataset(request, name)
    if op == "correlation_threshold" and name == "cells_nan":
        df = request.getfixturevalue("cells_small")  # the peer's pandas NaN path is O(n d^2) in Cython
    samples = CONTROL[name] if control else "all"
    kw = dict(operation=op, samples=samples, corr_threshold=CORR[name])
    if op == "noise_removal":
        kw.update(noise_removal_perturb_groups=GROUPS[name],
                  noise_removal_stdev_cutoff=_noise_cutoff(df, samples, GROUPS[name]))
    if op == "blocklist" and name == "lincs":
        kw.update(blocklist_file=str(CONSENSUS_BLOCKLIST))  # the packaged list names no LINCS feature
    if op == "blocklist" and name == "bbbc021":  # nor any BBBC021 feature: an explicit list
        kw.update(blocklist=_feats(df)[::97] + ["Cells_not_in_table"])
    expected = _peer(df, **kw)
    got = _ours(df, **kw)
    pd.testing.assert_frame_equal(got, expected)
    if op in ("correlation_threshold", "variance_threshold", "drop_outliers", "blocklist") and name != "lincs":
        assert got.shape[1] < df.shape[1], "the case should exclude something"


def test_correlation_full_single_cells_matches_peer(cells):
    """All 5,792 single-cell features: constant columns, duplicated columns (exact ties), thousands of pairs."""
    expected = _peer(cells, operation="correlation_threshold")
    got = _ours(cells, operation="correlation_threshold")
    pd.testing.assert_frame_equal(got, expected)
    assert cells.shape[1] - got.shape[1] > 1000


@pytest.fixture(scope="module")
def cells_ranked(cells) -> pd.DataFrame:
    """1,200 features of ``cells`` without NaN (the peer's spearman re-ranks every pair with unequal NaN)."""
    f = _feats(cells)
    return cells[["Metadata_Well", "Metadata_Site"] + f[:600] + f[-600:]]


@pytest.fixture(scope="module")
def cells_rank_nan(cells_nan) -> pd.DataFrame:
    """150 features of ``cells_nan``, NaN included."""
    f = _feats(cells_nan)
    nanf = [c for c in f if cells_nan[c].isna().any()]
    keep = list(dict.fromkeys(nanf[:40] + [c for c in nanf if not c.startswith("Nuclei_")][:30] + f[:80]))
    return cells_nan[["Metadata_Well", "Metadata_Site"] + keep]


CONTROL.update(cells_ranked=CONTROL["cells_nan"], cells_rank_nan=CONTROL["cells_nan"])
CORR.update(cells_ranked=0.9, cells_rank_nan=0.8)


@pytest.mark.parametrize("name", ["bbbc021", "lincs", "cells_ranked", "cells_rank_nan"])
@pytest.mark.parametrize("method", ["spearman", "kendall"])
def test_rank_correlation_matches_peer(request, name, method):
    df = _dataset(request, name)
    if method == "kendall":  # the peer calls scipy.stats.kendalltau once per pair: keep 50 features
        f = _feats(df)
        df = df[[c for c in df.columns if not c.startswith(CP)] + f[:25] + f[-25:]]
    for samples in ("all", CONTROL[name]):
        kw = dict(operation="correlation_threshold", corr_method=method, corr_threshold=CORR[name], samples=samples)
        pd.testing.assert_frame_equal(_ours(df, **kw), _peer(df, **kw))


CHAIN = ["variance_threshold", "drop_na_columns", "correlation_threshold", "blocklist"]
CHAINS = [CHAIN, CHAIN[::-1], ["drop_outliers", "correlation_threshold", "frequency_threshold", "blocklist"]]


@pytest.mark.parametrize("name", ["bbbc021", "lincs", "cells_small"])
@pytest.mark.parametrize("chain", CHAINS, ids=["var-na-corr-block", "block-corr-na-var", "outlier-corr-freq-block"])
def test_four_operation_chain_matches_peer(request, name, chain):
    """Each operation decides on the features the previous ones kept: order changes the result, identically."""
    df = _dataset(request, name)
    for samples in ("all", CONTROL[name]):
        kw = dict(operation=chain, samples=samples, corr_threshold=CORR[name], outlier_cutoff=100, min_variance=0.05)
        pd.testing.assert_frame_equal(_ours(df, **kw), _peer(df, **kw))


# ------------------------------------------------------------------------------------ standalone functions


@pytest.mark.parametrize("name", ["bbbc021", "cells_small"])
def test_standalone_functions_match_peer(request, name):
    df = _dataset(request, name)
    f = _feats(df)
    for samples in ("all", CONTROL[name]):
        assert sorted(variance_threshold(df, f, samples, 1e-3)) == sorted(peer_var(df, f, samples, 1e-3))
        assert sorted(variance_threshold(df, f, samples, 0)) == sorted(peer_var(df, f, samples, 0))
        assert sorted(frequency_threshold(df, f, samples, 0.2, 0.1)) == sorted(peer_freq(df, f, samples, 0.2, 0.1))
        assert sorted(get_na_columns(df, f, samples, 0.01)) == sorted(peer_na(df, f, samples, 0.01))
        assert sorted(drop_outlier_features(df, f, samples, 50)) == sorted(peer_drop_outliers(df, f, samples, 50))
        cut = _noise_cutoff(df, samples, GROUPS[name])
        assert sorted(noise_removal(df, GROUPS[name], f, samples, cut)) == sorted(
            peer_noise(df, GROUPS[name], f, samples, cut))
    small = f[:300]
    assert sorted(correlation_threshold(df, small, "all", 0.8, "pearson")) == sorted(
        peer_corr(df, small, "all", 0.8, "pearson"))


def test_noise_removal_with_label_list_matches_peer(bbbc021):
    labels = bbbc021["Metadata_compound"].tolist()  # one label per row, default RangeIndex
    cut = _noise_cutoff(bbbc021, "all", "Metadata_compound")
    kw = dict(operation="noise_removal", noise_removal_perturb_groups=labels, noise_removal_stdev_cutoff=cut)
    pd.testing.assert_frame_equal(_ours(bbbc021, **kw), _peer(bbbc021, **kw))


def test_noise_removal_labels_are_positional():
    """phenovec matches a label list to the samples rows by position (the peer aligns on index labels)."""
    df = pd.DataFrame({"Cells_a": [0.0, 10.0, 0.0, 0.0], "Cells_b": [1.0, 2.0, 3.0, 4.0]}, index=[10, 11, 12, 13])
    got = noise_removal(df, ["x", "y", "y", "y"], samples="all", noise_removal_stdev_cutoff=1.0)
    # group y = rows 11..13: Cells_a sd = 4.71, Cells_b sd = 0.82; group x alone: 0 -> means 2.36 / 0.41
    assert got == ["Cells_a"]
    with pytest.raises(ValueError, match="3 labels but the samples select 4 rows"):
        noise_removal(df, ["x", "y", "y"], samples="all", noise_removal_stdev_cutoff=1.0)


# ------------------------------------------------------------------------------------ blocklists


def test_blocklist_packaged_copy_equals_peer_default(cells):
    import pycytominer.cyto_utils.blocklist as peer_bl

    assert load_blocklist() == peer_bl.Blocklist(blocklist_name="default").to_list()
    assert REGISTRY.read_text().startswith("# Source: pycytominer 1.7.1")
    for kw in ({}, {"blocklist_name": "default"}, {"blocklist": ["Cells_AreaShape_Area", "Nope"]},
               {"blocklist": "Cells_AreaShape_Area"}, {"blocklist_file": str(CONSENSUS_BLOCKLIST)}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert get_blocklist_features(population_df=cells, **kw) == peer_blocklist(population_df=cells, **kw)
        pd.testing.assert_frame_equal(_ours(cells, operation="blocklist", **kw),
                                      _peer(cells, operation="blocklist", **kw))


def test_blocklist_file_missing_is_an_error(cells, tmp_path):
    missing = tmp_path / "no_such_blocklist.txt"
    with pytest.raises(FileNotFoundError, match="no_such_blocklist.txt"):
        feature_select(cells, operation="blocklist", blocklist_file=str(missing))
    bad = tmp_path / "bad.csv"
    bad.write_text("feature\nCells_AreaShape_Area\n")
    with pytest.raises(ValueError, match="column named 'blocklist'"):
        feature_select(cells, operation="blocklist", blocklist_file=str(bad))
    with pytest.raises(ValueError, match="unknown blocklist name 'nope'"):
        feature_select(cells, operation="blocklist", blocklist_name="nope")


# ------------------------------------------------------------------------------------ bit-level pieces


def test_correlation_matrices_are_the_peers_bit_for_bit(cells_small):
    f = _feats(cells_small)[:300]
    x = feature_matrix(cells_small, f)
    sub = cells_small.loc[:, f]
    assert np.isnan(x).any()
    assert np.array_equal(pandas_nancorr(x), sub.corr().to_numpy(), equal_nan=True)
    assert np.array_equal(spearman_matrix(x), sub.corr("spearman").to_numpy(), equal_nan=True)
    k = f[:25] + f[-25:]
    got, want = kendall_matrix(feature_matrix(cells_small, k)), cells_small[k].corr("kendall").to_numpy()
    if int(pd.__version__.split(".")[0]) < 3:  # the pandas pycytominer 1.7.1 runs with (CI pins 2.3.3): bit for bit
        assert np.array_equal(got, want, equal_nan=True)
    else:  # pandas 3 sums tau-b in another order: equal to the last bits (1.1e-16 seen under pandas 3.1)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
    full = [c for c in f if not cells_small[c].isna().any()]
    xf = feature_matrix(cells_small, full)
    assert np.array_equal(peer_corrcoef(xf), np.corrcoef(cells_small.loc[:, full].transpose()), equal_nan=True)


def test_abs_column_sums_match_the_peers_pandas_frames():
    """The peer's S comes from a copy-on-write frame (corrcoef path) or a copy=False frame (DataFrame.corr)."""
    assert pd.options.mode.copy_on_write  # what importing pycytominer sets, i.e. the peer's setting
    rng = np.random.default_rng(3)
    for d in (5, 17, 130, 1001):
        for nan in (False, True):
            r = rng.standard_normal((d, d)) * 10.0 ** rng.integers(-8, 8, (d, d))
            if nan:
                r[rng.random((d, d)) < 0.01] = np.nan
            names = [f"f{i}" for i in range(d)]
            peer_np = pd.DataFrame(r, index=pd.Index(names), columns=pd.Index(names)).abs().sum().to_numpy()
            peer_pd = pd.DataFrame(r, index=pd.Index(names), columns=pd.Index(names), copy=False).abs().sum().to_numpy()
            assert np.array_equal(abs_column_sums(r, "corrcoef"), peer_np)
            assert np.array_equal(abs_column_sums(r, "corr"), peer_pd)


def _frame(x):
    return pd.DataFrame(x, columns=[f"Cells_f{i}" for i in range(x.shape[1])])


class _CountPeerCorrcoef:
    """Counts calls of the exact fallback (the peer's own np.corrcoef) in correlation_threshold."""

    def __init__(self, monkeypatch):
        import phenovec.process.correlation_threshold as ct

        self.calls = 0
        real = ct.peer_corrcoef

        def counted(x):
            self.calls += 1
            return real(x)

        monkeypatch.setattr(ct, "peer_corrcoef", counted)


def test_pair_at_the_threshold_is_decided_as_the_peer(monkeypatch):
    """A threshold equal to the peer's own r (and one ulp either side): our r differs in the last bits, so
    the pair is inside the error bound and the peer's own R decides (the fallback must run)."""
    counter = _CountPeerCorrcoef(monkeypatch)
    rng = np.random.default_rng(11)
    n = 200
    a = rng.standard_normal(n)
    x = np.column_stack([a, a + 0.45 * rng.standard_normal(n), rng.standard_normal(n),
                         a * 3 + 0.5 * rng.standard_normal(n)])
    df = _frame(x)
    r = np.corrcoef(df.transpose())
    checked = 0
    for i, j in [(1, 0), (3, 0), (3, 1)]:
        for t in (r[i, j], np.nextafter(r[i, j], -np.inf), np.nextafter(r[i, j], np.inf)):
            if not 0 <= t <= 1:
                continue
            before = counter.calls
            assert sorted(correlation_threshold(df, threshold=t)) == sorted(peer_corr(df, threshold=t)), (i, j, t)
            assert counter.calls == before + 1, "a pair at the threshold must go to the exact path"
            assert sorted(correlation_threshold(df, threshold=t, method="spearman")) == sorted(
                peer_corr(df, threshold=t, method="spearman"))
            checked += 1
    assert checked >= 6
    before = counter.calls
    assert correlation_threshold(df, threshold=0.999) == sorted(peer_corr(df, threshold=0.999))
    assert counter.calls == before, "a threshold far from every r is decided by the bounds alone"


def test_ties_duplicates_and_offset_constants_are_decided_as_the_peer(monkeypatch):
    """Duplicated columns tie exactly in sum |r|; constant columns whose rounded mean leaves an offset
    correlate at +-1 in np.corrcoef (the peer pairs them). The peer's sort order decides both."""
    counter = _CountPeerCorrcoef(monkeypatch)
    rng = np.random.default_rng(5)
    n = 37
    base = rng.standard_normal((n, 6))
    x = np.column_stack([base, base[:, 2], base[:, 4] * 2 + 7, np.full(n, 0.1), np.full(n, 3.3), np.zeros(n),
                         base[:, 0] + 1e-3 * rng.standard_normal(n), base[:, 2]])
    df = _frame(x)
    for t in (0.9, 0.5, 0.0, 1.0):
        for method in ("pearson", "spearman", "kendall"):
            assert sorted(correlation_threshold(df, threshold=t, method=method)) == sorted(
                peer_corr(df, threshold=t, method=method)), (t, method)
    assert counter.calls >= 3


def test_random_small_cases_match_peer():
    """Random small tables with duplicates, affine copies, constants, rounding ties and NaN (all methods)."""
    rng = np.random.default_rng(2024)
    for trial in range(50):
        n, d = int(rng.integers(3, 60)), int(rng.integers(2, 40))
        k = int(rng.integers(1, d + 1))
        x = rng.standard_normal((n, k))[:, rng.integers(0, k, d)] + rng.uniform(0, 0.5, d) * rng.standard_normal((n, d))
        if rng.random() < 0.5:
            x = np.round(x, int(rng.integers(0, 3)))
        for _ in range(int(rng.integers(0, 3))):
            x[:, rng.integers(d)] = x[:, rng.integers(d)]
        if rng.random() < 0.3:
            x[:, rng.integers(d)] = rng.choice([0.0, 0.1, 1.0, 3.3])
        if rng.random() < 0.3:
            x[:, rng.integers(d)] = 3 * x[:, rng.integers(d)] + 1000
        if rng.random() < 0.3:
            x[rng.random((n, d)) < 0.1] = np.nan
        method = str(rng.choice(["pearson", "pearson", "spearman", "kendall"]))
        t = float(rng.choice([0.9, 0.5, 0.0, 1.0, 0.99]))
        df = _frame(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = sorted(peer_corr(df, threshold=t, method=method))
        assert sorted(correlation_threshold(df, threshold=t, method=method)) == expected, (trial, method, t)


def test_large_d_screen_path_matches_peer(monkeypatch):
    """d = 700 correlated features (float32 screen + float64 member rows, no fallback needed)."""
    counter = _CountPeerCorrcoef(monkeypatch)
    rng = np.random.default_rng(9)
    n, d = 300, 700
    lat = rng.standard_normal((n, 200))
    x = lat[:, rng.integers(0, 200, d)] + rng.uniform(0.1, 0.8, d) * rng.standard_normal((n, d))
    x[:, :50] = np.exp(x[:, :50])
    df = _frame(x)
    for t in (0.9, 0.8):
        assert sorted(correlation_threshold(df, threshold=t)) == sorted(peer_corr(df, threshold=t))
    assert correlation_exclusions(x, list(df.columns), 0.9) == sorted(
        peer_corr(df, threshold=0.9), key=lambda c: int(c[len("Cells_f"):]))
    assert counter.calls == 0, "these decisions are all outside the error bounds: no exact fallback"


def test_frequency_threshold_edge_cases_match_peer():
    df = pd.DataFrame({
        "Cells_zero_signs": [0.0, -0.0, 0.0, 1.0, 1.0, 2.0, np.nan, 0.0],
        "Cells_two_values": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0],
        "Cells_all_nan": [np.nan] * 8,
        "Cells_const": [3.0] * 8,
        "Cells_ties": [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, np.nan],
        "Cells_int": [1, 2, 3, 4, 5, 6, 7, 8],
    })
    for fc, uc in [(0.05, 0.01), (0.2, 0.5), (0.5, 0.7), (1.0, 1.0), (0.0, 0.0)]:
        assert sorted(frequency_threshold(df, freq_cut=fc, unique_cut=uc)) == sorted(
            peer_freq(df, freq_cut=fc, unique_cut=uc)), (fc, uc)


def test_variance_threshold_nothing_passes_is_an_error_in_both(bbbc021):
    with pytest.raises(ValueError):
        peer_var(bbbc021, samples="all", min_variance=1e30)
    with pytest.raises(ValueError, match="no feature has variance above min_variance"):
        variance_threshold(bbbc021, samples="all", min_variance=1e30)


# ------------------------------------------------------------------------------------ bad input


def test_bad_input_errors_name_the_problem(bbbc021):
    with pytest.raises(ValueError, match="unknown feature_select operation 'correlation'"):
        feature_select(bbbc021, operation=["variance_threshold", "correlation"])
    with pytest.raises(ValueError, match="unknown feature_select operation 'nope'"):
        feature_select(bbbc021, operation="nope")
    with pytest.raises(TypeError, match="operation must be a string or a list"):
        feature_select(bbbc021, operation=3)
    with pytest.raises(KeyError, match="Cells_not_a_feature"):
        feature_select(bbbc021, features=["Cells_AreaShape_Area", "Cells_not_a_feature"])
    with pytest.raises(ValueError, match="matches no row"):
        feature_select(bbbc021, samples="Metadata_moa == 'no such moa'")
    for t in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="correlation threshold must be in"):
            feature_select(bbbc021, operation="correlation_threshold", corr_threshold=t)
    with pytest.raises(ValueError, match="correlation method 'cosine' not supported"):
        feature_select(bbbc021, operation="correlation_threshold", corr_method="cosine")
    with pytest.raises(ValueError, match="noise_removal needs both"):
        feature_select(bbbc021, operation="noise_removal", noise_removal_perturb_groups="Metadata_compound")
    with pytest.raises(KeyError, match="Metadata_nope"):
        feature_select(bbbc021, operation="noise_removal", noise_removal_perturb_groups="Metadata_nope",
                       noise_removal_stdev_cutoff=1.0)
    bad = bbbc021[["Metadata_moa", "Cells_AreaShape_Area"]].copy()
    bad["Cells_text"] = "abc"
    with pytest.raises(ValueError, match="Cells_text"):
        feature_select(bad, operation="variance_threshold")
    infinite = bbbc021[["Metadata_moa", "Cells_AreaShape_Area", "Cells_AreaShape_Perimeter"]].copy()
    infinite.loc[3, "Cells_AreaShape_Perimeter"] = np.inf
    with pytest.raises(ValueError, match="Cells_AreaShape_Perimeter.*infinity"):
        feature_select(infinite, operation="variance_threshold")


def test_threshold_zero_is_accepted_like_the_peer(lincs):
    f = _feats(lincs)[:60]
    df = lincs[["Metadata_broad_sample"] + f]
    pd.testing.assert_frame_equal(_ours(df, operation="correlation_threshold", corr_threshold=0.0),
                                  _peer(df, operation="correlation_threshold", corr_threshold=0.0))


def test_output_file_written_and_path_returned(bbbc021, tmp_path):
    out = tmp_path / "selected.csv.gz"
    ret = feature_select(bbbc021, operation=["variance_threshold", "drop_outliers"], output_file=out)
    assert ret == str(out)
    back = pd.read_csv(out, float_precision="round_trip")
    expected = _peer(bbbc021, operation=["variance_threshold", "drop_outliers"])
    pd.testing.assert_frame_equal(back, expected.reset_index(drop=True), check_dtype=False)
    pq = tmp_path / "selected.parquet"
    feature_select(bbbc021, operation="variance_threshold", output_file=pq)
    pd.testing.assert_frame_equal(pd.read_parquet(pq), _peer(bbbc021, operation="variance_threshold"))


def test_profiles_path_input(tmp_path, lincs):
    p = tmp_path / "lincs.parquet"
    lincs.to_parquet(p)
    pd.testing.assert_frame_equal(_ours(str(p), operation="correlation_threshold", corr_threshold=0.6),
                                  _peer(str(p), operation="correlation_threshold", corr_threshold=0.6))



def test_cli_exposes_frequency_and_variance_options(tmp_path):
    """--freq-cut / --unique-cut / --min-variance / --blocklist-name / --image-features reach feature_select (only
    a recipe's --set could change them), and the output equals the API's."""
    from phenovec.cli import main
    from phenovec.process.feature_select import feature_select

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(40, 3)), columns=["Cells_a", "Cells_b", "Cells_c"])
    df["Cells_c"] = np.where(np.arange(40) < 38, 1.0, 2.0)  # 2 of 40 rows differ: freq ratio 2/38
    df.insert(0, "Metadata_moa", np.repeat(["m1", "m2"], 20))
    df.to_parquet(tmp_path / "in.parquet")
    for cut, kept in ((0.1, ["Cells_a", "Cells_b"]), (0.01, ["Cells_a", "Cells_b", "Cells_c"])):
        out = tmp_path / f"o{cut}.parquet"
        assert main(["process", "feature-select", str(tmp_path / "in.parquet"), "-o", str(out), "--operation",
                     "frequency_threshold", "--freq-cut", str(cut), "--quiet"]) in (0, None)
        got = pd.read_parquet(out)
        assert [c for c in got.columns if c.startswith("Cells")] == kept
        want = feature_select(df, operation=["frequency_threshold"], freq_cut=cut)
        assert list(want.columns) == list(got.columns)
    out = tmp_path / "v.parquet"
    assert main(["process", "feature-select", str(tmp_path / "in.parquet"), "-o", str(out), "--min-variance", "0.5",
                 "--quiet"]) in (0, None)
    assert "Cells_c" not in pd.read_parquet(out).columns
