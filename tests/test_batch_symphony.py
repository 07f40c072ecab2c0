"""New profiles mapped onto a Harmony reference (phenovec.batch.symphony) against symphonypy 0.2.4 itself, and the
harmony step's fit re-applied."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from phenovec.batch import BatchFit, harmony
from phenovec.batch.harmony import run_harmony
from phenovec.batch.symphony import HarmonyReference

logging.getLogger("harmonypy").setLevel(logging.WARNING)


def _cells(n, d=10, n_plates=4, plate_prefix="P", seed=0, shift=1.0):
    """Six cell states, plates with their own offsets, a second batch variable (sites); every row's largest
    coordinate positive (symphonypy flips rows whose largest coordinate is negative: module docstring)."""
    rng = np.random.default_rng(seed)
    states = np.random.default_rng(99).normal(size=(6, d)) * 2
    state = rng.integers(0, 6, n)
    plate = rng.integers(0, n_plates, n)
    offsets = np.random.default_rng(1000 + seed).normal(size=(n_plates, d)) * shift
    x = states[state] + rng.normal(size=(n, d)) * 0.6 + offsets[plate]
    x[:, 0] += 4.0
    meta = pd.DataFrame({"Metadata_Plate": [f"{plate_prefix}{p}" for p in plate],
                         "Metadata_Site": rng.choice(["s1", "s2", "s3"], n), "Metadata_State": state},
                        index=[f"{plate_prefix}cell{i}" for i in range(n)])
    assert (x.max(axis=1) > 0).all()
    return x, meta


def _symphonypy(x_ref, meta_ref, x_query, meta_query, key, **kw):
    """symphonypy 0.2.4 as its users run it: harmony_integrate on the reference, map_embedding on the query (the
    query already in the reference's coordinates: identity loadings, means 0, sds 1, values within its +-10 clip)."""
    import anndata
    import symphonypy as sp  # the peer, pinned in requirements/ci-no-deps.txt: missing is a failure

    d = x_ref.shape[1]
    assert np.abs(x_query).max() < 10
    ref = anndata.AnnData(X=x_ref.copy(), obs=meta_ref.astype(str))
    ref.obsm["X_pca"] = x_ref.copy()
    ref.var["mean"] = 0.0
    ref.var["std"] = 1.0
    ref.varm["PCs"] = np.eye(d)
    sp.pp.harmony_integrate(ref, key=key, random_seed=kw.pop("random_state", 0), **kw.pop("harmony", {}))
    query = anndata.AnnData(X=x_query.copy(), obs=meta_query.astype(str))
    query.uns["log1p"] = {}
    sp.tl.map_embedding(query, ref, key=key, use_genes_column=None, **kw)
    return ref, query


@pytest.mark.parametrize("key,kw", [
    ("Metadata_Plate", {}),
    (["Metadata_Plate", "Metadata_Site"], {"random_state": 3}),
    (["Metadata_Plate", "Metadata_Site"], {"lamb": 0.5, "harmony": {"nclust": 15, "sigma": 0.2}}),
    ("Metadata_Plate", {"lamb": [0.2, 1.0, 3.0]}),  # one per query plate
])
def test_mapping_equals_symphonypy(key, kw):
    x_ref, meta_ref = _cells(900, seed=0)
    x_q, meta_q = _cells(400, n_plates=3, plate_prefix="Q", seed=1)  # plates the reference has not seen
    hkw = dict(kw.get("harmony", {}))
    ref, query = _symphonypy(x_ref, meta_ref, x_q, meta_q, key, **{k: (dict(v) if isinstance(v, dict) else v)
                                                                   for k, v in kw.items()})
    h = run_harmony(x_ref, meta_ref, key, random_state=kw.get("random_state", 0), **hkw)
    np.testing.assert_array_equal(h.Z_corr, ref.obsm["X_pca_harmony"])  # the reference: harmonypy's bits
    mapped = h.reference().map(x_q, meta_q, key, lamb=kw.get("lamb"))
    want = query.obsm["X_pca_harmony"]
    assert np.abs(mapped.Z_corr - want).max() <= 1e-9 * np.abs(want).max()
    np.testing.assert_allclose(mapped.R, query.obsm["X_pca_harmony_symphony_R"], rtol=0, atol=1e-12)
    assert np.abs(mapped.Z_corr - x_q).max() > 0.1  # the query was corrected, not passed through


def test_mapping_removes_new_plates_offsets_and_keeps_states():
    """Query plates with large offsets of their own: after mapping, the plates' means come together and each
    cell sits nearest the corrected reference cells of its own state."""
    x_ref, meta_ref = _cells(1200, seed=0)
    x_q, meta_q = _cells(600, n_plates=3, plate_prefix="Q", seed=2, shift=2.5)
    h = run_harmony(x_ref, meta_ref, "Metadata_Plate")
    mapped = h.reference().map(x_q, meta_q, "Metadata_Plate")

    def spread(z):
        plates = meta_q["Metadata_Plate"].to_numpy()
        mu = z.mean(axis=0)
        return np.mean([np.linalg.norm(z[plates == p].mean(axis=0) - mu) for p in np.unique(plates)])

    assert spread(mapped.Z_corr) < 0.4 * spread(x_q)
    state_means = np.stack([h.Z_corr[meta_ref["Metadata_State"].to_numpy() == s].mean(axis=0) for s in range(6)])
    nearest = np.argmin(((mapped.Z_corr[:, None, :] - state_means[None]) ** 2).sum(-1), axis=1)
    assert (nearest == meta_q["Metadata_State"].to_numpy()).mean() > 0.95
    # with no batch variable the query is one batch: only the reference's pull
    one = h.reference().map(x_q)
    assert one.Z_corr.shape == x_q.shape and spread(one.Z_corr) > spread(mapped.Z_corr)


def test_assignment_scales_rows_to_unit_length_only():
    """A row whose largest coordinate is negative is assigned by its own direction (symphonypy would flip it)."""
    c = np.array([[1.0, 0.2, 0.0], [-1.0, -0.3, -0.1], [0.0, 1.0, 0.0]])
    ref = HarmonyReference(c * 50, np.full(3, 50.0), 0.1)
    x = np.array([[-2.0, -0.5, -0.3], [3.0, 0.4, 0.1], [0.1, 2.0, -0.2]])
    r = ref.assign(x)
    np.testing.assert_allclose(r.sum(axis=1), 1.0)
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ ref.centroids.T
    np.testing.assert_array_equal(r.argmax(axis=1), cos.argmax(axis=1))
    np.testing.assert_array_equal(r.argmax(axis=1), [1, 0, 2])


def test_assignment_of_rows_at_the_ends_of_the_float_range():
    """Rows of 1e160 (their squared length overflows) and 1e-170 (it underflows) are assigned as the same rows at
    scale 1: each row is divided by its largest coordinate before its length is taken."""
    x_ref, meta_ref = _cells(300, d=4, seed=0)
    ref = run_harmony(x_ref, meta_ref, "Metadata_Plate", nclust=5).reference()
    x = _cells(20, d=4, seed=3)[0]
    r = ref.assign(x)
    for scale in (1e160, 1e-170):
        np.testing.assert_allclose(ref.assign(x * scale), r, rtol=1e-12, atol=1e-15)
    assert (ref == ref) is True and ref != HarmonyReference(ref.cluster_sums, ref.cluster_weights, ref.sigma)
    hash(ref)  # identity semantics: arrays are not compared element-wise


def test_reference_from_a_result_in_the_old_layout_is_refused():
    """harmonypy <= 0.0.10 kept R as K x N and Z_corr as d x N; with K == d their shapes agree, and the reference
    would have N clusters. Each cell's assignments must sum to 1."""
    x_ref, meta_ref = _cells(300, d=5, seed=0)
    h = run_harmony(x_ref, meta_ref, "Metadata_Plate", nclust=5)

    class Old:
        R, Z_corr = h.R.T, h.Z_corr.T

    with pytest.raises(ValueError, match=r"look like K x N.* pass R\.T and Z_corr\.T"):
        HarmonyReference.from_harmony(Old, sigma=0.1)


def test_mapping_refusals_name_the_problem():
    x_ref, meta_ref = _cells(300, d=4, seed=0)
    ref = run_harmony(x_ref, meta_ref, "Metadata_Plate", nclust=5).reference()
    x_q, meta_q = _cells(60, d=4, n_plates=2, plate_prefix="Q", seed=1)
    with pytest.raises(ValueError, match=r"n x 4 .* got shape \(60, 3\)"):
        ref.map(x_q[:, :3], meta_q, "Metadata_Plate")
    bad = x_q.copy()
    bad[7, 2] = np.inf
    with pytest.raises(ValueError, match="row 7, column 2"):
        ref.map(bad, meta_q, "Metadata_Plate")
    zero = x_q.copy()
    zero[5] = 0.0
    with pytest.raises(ValueError, match="query row 5 is all zeros"):
        ref.map(zero, meta_q, "Metadata_Plate")
    nan = meta_q.copy()
    nan["Metadata_Plate"] = nan["Metadata_Plate"].astype(object)
    nan.iloc[3, 0] = None
    with pytest.raises(ValueError, match=r"'Metadata_Plate' is missing .* row 'Qcell3'"):
        ref.map(x_q, nan, "Metadata_Plate")
    with pytest.raises(KeyError, match="'Metadata_Well' is not a column"):
        ref.map(x_q, meta_q, "Metadata_Well")
    with pytest.raises(ValueError, match=r"lamb must be one number, one per batch variable \(1\), or one per batch "
                                         r"\(2\); got shape \(3,\)"):
        ref.map(x_q, meta_q, "Metadata_Plate", lamb=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="not negative"):
        ref.map(x_q, meta_q, "Metadata_Plate", lamb=-1.0)
    # two batch variables without a penalty: every cluster's system is singular
    with pytest.raises(ValueError, match="singular"):
        ref.map(x_q, meta_q, ["Metadata_Plate", "Metadata_Site"], lamb=0.0)
    with pytest.raises(ValueError, match="one value per cluster"):
        HarmonyReference(ref.cluster_sums, ref.cluster_weights[:-1], ref.sigma)
    sums = ref.cluster_sums.copy()
    sums[1, 2] = np.nan
    with pytest.raises(ValueError, match="cluster_sums must be finite"):
        HarmonyReference(sums, ref.cluster_weights, ref.sigma)
    sums[1] = 0.0
    with pytest.raises(ValueError, match="reference cluster 1 has no weight or a zero centroid"):
        HarmonyReference(sums, ref.cluster_weights, ref.sigma)
    with pytest.raises(ValueError, match="sigma must be positive"):
        HarmonyReference(ref.cluster_sums, ref.cluster_weights, 0.0)


def _table(x, meta):
    df = meta.copy()
    for j in range(x.shape[1]):
        df[f"Cells_f{j}"] = x[:, j]
    return df


def test_harmony_step_fit_maps_new_plates(tmp_path):
    """The harmony step's fit, saved and loaded, maps a new table onto the fitted run: its PCA, then the Symphony
    mapping, the same numbers as the reference's own ``map``; the fitted run's own table is harmonypy's Harmony."""
    x_ref, meta_ref = _cells(800, seed=0)
    x_q, meta_q = _cells(300, n_plates=2, plate_prefix="Q", seed=1, shift=2.0)
    ref_table, query_table = _table(x_ref, meta_ref), _table(x_q, meta_q)
    corrected, fit = harmony(ref_table, n_components=6, return_fit=True)
    assert list(corrected.columns[-6:]) == [f"PC{i}" for i in range(1, 7)]
    assert fit.params["vars_use"] == ["Metadata_Plate"]
    path = fit.save(tmp_path / "harmony_fit.npz")
    mapped = harmony(query_table, fit=path)
    assert list(mapped.columns) == list(corrected.columns)
    np.testing.assert_array_equal(mapped.index, query_table.index)
    from sklearn.decomposition import PCA

    pcs = (x_q - fit.arrays["pca_mean"]) @ fit.arrays["pca_components"].T
    h = run_harmony(PCA(n_components=6).fit_transform(x_ref), meta_ref, "Metadata_Plate")
    np.testing.assert_array_equal(corrected.filter(like="PC").to_numpy(), h.Z_corr)
    want = h.reference().map(pcs, meta_q, "Metadata_Plate").Z_corr
    np.testing.assert_array_equal(mapped.filter(like="PC").to_numpy(), want)
    # the fit's own reference arrays give exactly the step's numbers
    own = HarmonyReference(fit.arrays["cluster_sums"], fit.arrays["cluster_weights"], fit.arrays["sigma"])
    np.testing.assert_array_equal(mapped.filter(like="PC").to_numpy(),
                                  own.map(pcs, meta_q.reset_index(drop=True), ["Metadata_Plate"]).Z_corr)
    # refusals: a table without the fit's features or batch column, a fit without a reference, another step's fit
    with pytest.raises(KeyError, match="features: unknown column 'Cells_f3'"):
        harmony(query_table.drop(columns="Cells_f3"), fit=path)
    with pytest.raises(KeyError, match="vars_use: unknown column 'Metadata_Plate'"):
        harmony(query_table.drop(columns="Metadata_Plate"), fit=path)
    nan = query_table.astype({"Metadata_Plate": object})
    nan.loc["Qcell17", "Metadata_Plate"] = None
    with pytest.raises(ValueError, match=r"'Metadata_Plate' is missing .* row 'Qcell17'"):
        harmony(nan, fit=path)
    old = BatchFit("harmony", fit.params, {"centroids": fit.arrays["centroids"]})
    with pytest.raises(ValueError, match="no Symphony reference"):
        harmony(query_table, fit=old)
    with pytest.raises(ValueError, match="'tvn' fit, not a 'harmony' fit"):
        harmony(query_table, fit=BatchFit("tvn", {}, {}))


def test_harmony_step_fit_in_a_recipe(tmp_path):
    """``harmony: {fit: FILE}`` in a recipe maps the profiles onto a saved fit."""
    from phenovec.process.recipe import apply_recipe

    x_ref, meta_ref = _cells(500, d=5, seed=0)
    x_q, meta_q = _cells(200, d=5, n_plates=2, plate_prefix="Q", seed=1)
    _, fit = harmony(_table(x_ref, meta_ref), features=[f"Cells_f{j}" for j in range(5)], nclust=8,
                     return_fit=True)
    path = str(fit.save(tmp_path / "h.npz"))
    out = apply_recipe({"name": "map", "steps": [{"harmony": {"fit": path}}]}, _table(x_q, meta_q))
    direct = harmony(_table(x_q, meta_q), fit=path)
    pd.testing.assert_frame_equal(out.reset_index(drop=True), direct.reset_index(drop=True))


def cli_fit_then_map(tmp_path, n_ref, n_query, d, *sets):
    """A reference table (4 plates) and a query table of new plates (2) written as CSV; ``phenovec process batch
    harmony`` fitted on the first (``--set`` each of ``sets``, ``--save-fit``, output ref.parquet), then mapping the
    second (``--fit``, output q.parquet). Returns the two CSVs' paths and the fit's."""
    from phenovec.cli import main

    x_ref, meta_ref = _cells(n_ref, d=d, seed=0)
    x_q, meta_q = _cells(n_query, d=d, n_plates=2, plate_prefix="Q", seed=1)
    ref_csv, q_csv, fit_path = tmp_path / "ref.csv", tmp_path / "query.csv", tmp_path / "harmony.npz"
    _table(x_ref, meta_ref).to_csv(ref_csv, index=False)
    _table(x_q, meta_q).to_csv(q_csv, index=False)
    args = [a for kv in sets for a in ("--set", kv)]
    assert main(["process", "batch", "harmony", str(ref_csv), "-o", str(tmp_path / "ref.parquet"), *args,
                 "--save-fit", str(fit_path)]) == 0
    assert main(["process", "batch", "harmony", str(q_csv), "-o", str(tmp_path / "q.parquet"),
                 "--fit", str(fit_path)]) == 0
    return ref_csv, q_csv, fit_path


def test_cli_batch_saves_a_fit_and_maps_new_plates_onto_it(tmp_path, capsys):
    """``phenovec process batch harmony``: fit with --set arguments and --save-fit, then --fit maps a new table;
    both equal the Python calls. Unknown arguments and a fit for a step without one are refused."""
    from phenovec.cli import main

    ref_csv, q_csv, _ = cli_fit_then_map(tmp_path, 500, 200, 6, "vars_use=[Metadata_Plate]", "nclust=10")
    ref_table, q_table = pd.read_csv(ref_csv), pd.read_csv(q_csv)
    corrected, fit = harmony(ref_table, vars_use=["Metadata_Plate"], nclust=10, return_fit=True)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ref.parquet"), corrected)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "q.parquet"), harmony(q_table, fit=fit))
    capsys.readouterr()
    assert main(["process", "batch", "harmony", str(q_csv), "-o", str(tmp_path / "x.parquet"),
                 "--set", "n_clusters=10"]) == 2
    assert "harmony has no argument 'n_clusters'" in capsys.readouterr().err
    assert main(["process", "batch", "rank_int", str(q_csv), "-o", str(tmp_path / "x.parquet"),
                 "--save-fit", str(tmp_path / "r.npz")]) == 2
    assert "rank_int has no fit" in capsys.readouterr().err
