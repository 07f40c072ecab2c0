"""phenovec.process.spherize against pycytominer 1.7.1's Spherize / normalize(method="spherize").

The peer runs in this process on the same input (BBBC021 per-well means: 632 wells x 516 features, 330
DMSO; the LINCS plate SQ00015054: 384 wells x 454 features, 24 DMSO). Outputs must agree to 1e-6 absolute;
observed: 0.0 everywhere (bit-identical: same StandardScaler arithmetic on a column-major copy, same LAPACK
call), PCA columns compared up to sign (phenovec fixes each axis' sign: largest-|.| entry positive).
Streamed fits (Gram + eigh) against the in-memory SVD fit: tolerances are measured, see each test.
The CUDA kernels run only under the Numba CUDA simulator (no GPU here), in a subprocess.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pycytominer
from pycytominer.operations.transform import Spherize

from phenovec.process.columns import infer_cp_features
from phenovec.process.kernel_loader import cuda_available, kernel_path, load_kernel, resolve_device
from phenovec.process.source import open_source
from phenovec.process.spherize import SpherizeFit, SpherizeWarning, Spherizer, spherize

ATOL = 1e-6
METHODS = ["PCA", "ZCA", "PCA-cor", "ZCA-cor"]
CONTROLS = {"bbbc021": "Metadata_compound == 'DMSO'", "lincs": "Metadata_broad_sample == 'DMSO'"}
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.filterwarnings("ignore::phenovec.process.spherize.SpherizeWarning")


@pytest.fixture(scope="module")
def data(bbbc021, lincs_plate):
    return {"bbbc021": bbbc021, "lincs": lincs_plate}


def _peer(df, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pycytominer.normalize(df, method="spherize", **kw)


def _feature_block(frame: pd.DataFrame) -> np.ndarray:
    return frame[[c for c in frame.columns if not str(c).startswith("Metadata_")]].to_numpy()


def _max_diff(peer: np.ndarray, ours: np.ndarray, pca: bool) -> float:
    """Max |peer - ours|; for PCA each of our columns takes the sign that matches the peer's column."""
    if pca:
        sign = np.sign((peer * ours).sum(axis=0))
        sign[sign == 0] = 1
        ours = ours * sign
    return float(np.abs(peer - ours).max())


# ------------------------------------------------------------------------------------------ equivalence


@pytest.mark.parametrize("dataset", ["bbbc021", "lincs"])
@pytest.mark.parametrize("samples", ["all", "controls"])
@pytest.mark.parametrize("method,center", [(m, True) for m in METHODS] + [("PCA", False), ("ZCA", False)])
def test_equals_pycytominer_normalize(data, dataset, samples, method, center):
    df = data[dataset]
    q = "all" if samples == "all" else CONTROLS[dataset]
    peer = _peer(df, samples=q, spherize_method=method, spherize_center=center)
    ours = spherize(df, samples=q, method=method, center=center, device="cpu")
    assert list(ours.columns) == list(peer.columns)
    assert ours.index.equals(peer.index)
    pd.testing.assert_frame_equal(ours[[c for c in ours if c.startswith("Metadata_")]],
                                  peer[[c for c in peer if c.startswith("Metadata_")]])
    diff = _max_diff(_feature_block(peer), _feature_block(ours), method.startswith("PCA"))
    print(f"{dataset} samples={samples} {method} center={center}: max |peer - phenovec| = {diff:.3g}")
    assert diff <= ATOL


def test_cor_methods_need_center_like_peer():
    for method in ("PCA-cor", "ZCA-cor"):
        with pytest.raises(ValueError, match="require center=True"):
            Spherize(method=method, center=False)
        with pytest.raises(ValueError, match="require center=True"):
            Spherizer(method=method, center=False)
    with pytest.raises(ValueError, match="not supported"):
        Spherizer(method="whiten")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [2, 5])
def test_few_controls_n_le_d_equals_peer_class(lincs_plate, method, n):
    """n <= d: the peer pads the singular values with s[r-1]; phenovec does the same and warns."""
    feats = infer_cp_features(lincs_plate)
    ctrl = lincs_plate.loc[lincs_plate["Metadata_broad_sample"] == "DMSO", feats].iloc[:n]
    peer = Spherize(method=method, return_numpy=True).fit(ctrl).transform(lincs_plate[feats])
    with pytest.warns(SpherizeWarning, match=r"null-space directions are not estimated"):
        sph = Spherizer(method=method, device="cpu").fit(ctrl)
    ours = sph.transform(lincs_plate[feats])
    assert sph.rank_ == n - 1
    assert list(ours.columns) == sph.output_names(feats)
    diff = _max_diff(peer, ours.to_numpy(), method.startswith("PCA"))
    print(f"lincs {n} controls {method}: max diff {diff:.3g}")
    assert diff <= ATOL
    # the padded singular values: [s_1..s_r, s_r, ..., s_r]
    assert np.all(sph.singular_values_[n - 1:] == sph.singular_values_[n - 2])


def test_spherizer_class_api_matches_peer(lincs_plate):
    feats = infer_cp_features(lincs_plate)
    x = lincs_plate[feats]
    peer = Spherize(method="ZCA-cor", epsilon=1e-4).fit(x)
    sph = Spherizer(method="ZCA-cor", epsilon=1e-4, device="cpu").fit(x)
    np.testing.assert_allclose(sph.W, peer.W, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sph.mean_, peer.standard_scaler.mean_, rtol=1e-15, atol=0)
    np.testing.assert_allclose(sph.scale_, peer.standard_scaler.scale_, rtol=1e-15, atol=0)
    out = Spherizer(method="PCA", return_numpy=True, device="cpu").fit(x).transform(x)
    assert isinstance(out, np.ndarray) and out.shape == x.shape
    assert Spherizer(method="PCA").output_names(["a", "b"]) == ["PC1", "PC2"]
    assert Spherizer(method="ZCA").output_names(["a", "b"]) == ["a", "b"]
    # columns are taken by name: a reordered frame gives the same output
    shuffled = x[feats[::-1]]
    pd.testing.assert_frame_equal(sph.transform(shuffled), sph.transform(x))


def test_output_is_white_on_controls(bbbc021):
    """cov(transformed controls) = V diag(s^2/(s+eps)^2) V^T (= I for eps=0): what pycytominer 1.3-1.7.0 broke (#747)."""
    feats = infer_cp_features(bbbc021)[::5]  # 104 features, full rank over the 330 DMSO wells
    ctrl = bbbc021.loc[bbbc021["Metadata_compound"] == "DMSO", feats]
    for method in METHODS:
        sph = Spherizer(method=method, epsilon=0.0, device="cpu").fit(ctrl)
        assert sph.rank_ == len(feats)
        c = np.cov(sph.transform(ctrl).to_numpy(), rowvar=False)
        np.testing.assert_allclose(c, np.eye(len(feats)), atol=1e-8)
        sph = Spherizer(method=method, device="cpu").fit(ctrl)  # epsilon = 1e-6 shrinks each axis by s/(s+eps)
        s, vt = sph.singular_values_, sph.components_
        shrink = (s / (s + 1e-6)) ** 2
        expected = (vt.T * shrink) @ vt if method.startswith("ZCA") else np.diag(shrink)
        c = np.cov(sph.transform(ctrl).to_numpy(), rowvar=False)
        np.testing.assert_allclose(c, expected, atol=1e-8)
        peer = Spherize(method=method).fit(ctrl).transform(ctrl).to_numpy()
        np.testing.assert_allclose(np.cov(peer, rowvar=False), expected, atol=1e-8)


# ------------------------------------------------------------------------------------------ per group, saved fits


@pytest.fixture(scope="module")
def ten_plates(bbbc021):
    """10 plates (6 DMSO wells each); features constant over some plate's DMSO wells dropped (-cor needs that)."""
    plates = sorted(bbbc021["Metadata_Plate"].unique())[:10]
    df = bbbc021[bbbc021["Metadata_Plate"].isin(plates)]
    feats = infer_cp_features(df)
    dmso = df[df["Metadata_compound"] == "DMSO"]
    varying = dmso.groupby("Metadata_Plate")[feats].agg(lambda s: s.max() > s.min()).all()
    assert varying.sum() > 400
    return df.drop(columns=list(varying.index[~varying]))


@pytest.mark.parametrize("method", ["ZCA-cor", "PCA"])
def test_by_plate_equals_peer_loop(ten_plates, method):
    q = CONTROLS["bbbc021"]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ours = spherize(ten_plates, samples=q, method=method, by="Metadata_Plate", device="cpu")
    mine = [w for w in rec if issubclass(w.category, SpherizeWarning)]
    assert len(mine) == 1 and "and 9 more groups" in str(mine[0].message)  # one warning, not one per plate
    parts = [_peer(g, samples=q, spherize_method=method) for _, g in ten_plates.groupby("Metadata_Plate")]
    peer = pd.concat(parts).loc[ten_plates.index]
    assert list(ours.columns) == list(peer.columns)
    diff = _max_diff(_feature_block(peer), _feature_block(ours), False)
    if method.startswith("PCA"):  # signs per plate and column
        diff = max(_max_diff(_feature_block(peer.loc[g.index]), _feature_block(ours.loc[g.index]), True)
                   for _, g in ten_plates.groupby("Metadata_Plate"))
    print(f"by plate {method}: max diff {diff:.3g}")
    assert diff <= ATOL


def test_save_load_round_trip(ten_plates, tmp_path):
    q = CONTROLS["bbbc021"]
    out, fit = spherize(ten_plates, samples=q, by="Metadata_Plate", return_fit=True, device="cpu")
    assert isinstance(fit, SpherizeFit) and len(fit.spherizers) == 10
    path = fit.save(tmp_path / "fit.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.npz"]  # temporary file renamed away
    loaded = SpherizeFit.load(path)
    assert (loaded.method, loaded.epsilon, loaded.center, loaded.by, loaded.samples) == ("ZCA-cor", 1e-6, True, ["Metadata_Plate"], q)
    assert loaded.features == fit.features and list(loaded.spherizers) == list(fit.spherizers)
    again = spherize(ten_plates.iloc[::-1], fit=path, device="cpu").loc[out.index]
    # reversed rows sit elsewhere in BLAS's blocks: equal to a few ulps (observed 4e-17 with 1 BLAS thread)
    pd.testing.assert_frame_equal(again, out, check_exact=False, rtol=0, atol=1e-12)
    pd.testing.assert_frame_equal(loaded.transform(ten_plates, device="cpu"), out, check_exact=True)
    # rows of a plate the fit has not seen
    other = ten_plates.copy()
    other.loc[other.index[:3], "Metadata_Plate"] = "Week99_plate"
    with pytest.raises(KeyError, match="Week99_plate"):
        spherize(other, fit=loaded)
    with pytest.raises(ValueError, match="conflicts with the given fit"):
        spherize(ten_plates, fit=loaded, method="PCA")
    # a global fit round-trips too (key None), PCA with center=False (no mean, no scale stored)
    out_g, fit_g = spherize(ten_plates, method="PCA", center=False, return_fit=True, device="cpu")
    pd.testing.assert_frame_equal(spherize(ten_plates, fit=fit_g.save(tmp_path / "g.npz")), out_g, check_exact=True)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a phenovec spherize fit"):
        SpherizeFit.load(tmp_path / "other.npz")


def test_output_file_and_path_input(lincs_plate, tmp_path):
    src = tmp_path / "in.parquet"
    lincs_plate.to_parquet(src, index=False)
    res = spherize(src, output_file=tmp_path / "out.parquet", device="cpu")
    assert res == str(tmp_path / "out.parquet")
    back = pd.read_parquet(res)
    expected = spherize(lincs_plate, device="cpu").reset_index(drop=True)
    pd.testing.assert_frame_equal(back, expected, check_exact=True)


# ------------------------------------------------------------------------------------------ streaming fit


def _conditioned(n=3000, d=40, cond=100.0, offset=50.0, seed=1):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    x = rng.normal(size=(n, d)) @ (q * np.geomspace(1, 1 / cond, d)) @ q.T * 5
    return x + rng.normal(0, offset, d)


@pytest.mark.parametrize("method,center,tol", [
    # measured on this data (condition number 100 of the centered matrix): <= 5e-12 for the centered
    # methods, <= 1.2e-8 uncentered (the uncentered Gram also carries mean ~50 >> sd ~5, so it is far worse
    # conditioned). Tolerances are ~100x the measurement; both are well below 1e-6.
    ("ZCA-cor", True, 1e-9), ("PCA-cor", True, 1e-9), ("ZCA", True, 1e-9), ("PCA", True, 1e-9),
    ("ZCA", False, 1e-6), ("PCA", False, 1e-6),
])
def test_stream_fit_equals_in_memory(method, center, tol):
    x = _conditioned()
    a = Spherizer(method, center=center, device="cpu").fit(x)
    b = Spherizer(method, center=center, device="cpu").fit_stream(np.array_split(x, 7))
    assert b.n_samples_ == a.n_samples_ == len(x) and b.rank_ == a.rank_
    # PCA: no sign alignment here, the sign convention is shared by both paths
    diff = float(np.abs(a.transform(x).to_numpy() - b.transform(x).to_numpy()).max())
    print(f"stream vs in-memory {method} center={center}: {diff:.3g}")
    assert diff <= tol
    # the Gram route recovers a singular value s to ~eps * s_max^2 / s (condition number squared)
    s = a.singular_values_
    assert np.all(np.abs(b.singular_values_ - s) <= 100 * np.finfo(float).eps * s[0] ** 2 / s)


def test_stream_from_source_batches_lincs(lincs_plate):
    """DataFrame batches from open_source(...).iter_batches; n = 384 < d = 454 (padding path).

    Measured max |stream - in-memory| on the outputs: ~1e-10 (condition number of the non-null part ~2e3);
    asserted 1e-8.
    """
    feats = infer_cp_features(lincs_plate)
    batches = open_source(lincs_plate).iter_batches(columns=feats, batch_rows=100)
    with pytest.warns(SpherizeWarning):
        b = Spherizer("ZCA-cor", device="cpu").fit_stream(batches)
    a = Spherizer("ZCA-cor", device="cpu").fit(lincs_plate[feats])
    assert b.feature_names_in_ == feats and b.rank_ == a.rank_ == 383
    diff = float(np.abs(a.transform(lincs_plate).to_numpy() - b.transform(lincs_plate).to_numpy()).max())
    print(f"lincs stream vs in-memory ZCA-cor: {diff:.3g}")
    assert diff <= 1e-8
    chunks = list(b.transform_stream(open_source(lincs_plate).iter_batches(columns=feats, batch_rows=50)))
    # BLAS blocks a 50-row chunk differently from 384 rows: equal to a few ulps (observed 2.4e-13)
    np.testing.assert_allclose(np.vstack(chunks), b.transform(lincs_plate).to_numpy(), rtol=0, atol=1e-11)


def test_stream_bad_input():
    x = _conditioned(n=50, d=4)
    x[31, 2] = np.nan
    with pytest.raises(ValueError, match=r"'column 2' is nan in row 31"):
        Spherizer(device="cpu").fit_stream([x[:20], x[20:]])
    df = pd.DataFrame(_conditioned(n=50, d=3), columns=["a", "b", "c"])
    df["c"] = 2.5
    with pytest.raises(ValueError, match=r"constant over the 50 fit rows: 'c'"):
        Spherizer(device="cpu").fit_stream(open_source(df).iter_batches(batch_rows=16))
    with pytest.raises(ValueError, match="at least 2 fit rows"):
        Spherizer(device="cpu").fit_stream([x[:1]])


# ------------------------------------------------------------------------------------------ bad input


def test_nan_in_fit_or_transform_rows_names_column_and_row(lincs_plate):
    feats = infer_cp_features(lincs_plate)
    df = lincs_plate.copy()
    ctrl_row = df.index[df["Metadata_broad_sample"] == "DMSO"][3]
    df.loc[ctrl_row, feats[7]] = np.nan
    with pytest.raises(ValueError, match=rf"{feats[7]!r} is nan in row {ctrl_row}"):
        spherize(df, samples=CONTROLS["lincs"])
    df = lincs_plate.copy()
    other = df.index[df["Metadata_broad_sample"] != "DMSO"][0]
    df.loc[other, feats[0]] = np.inf
    with pytest.raises(ValueError, match=rf"{feats[0]!r} is inf in row {other}"):
        spherize(df, samples=CONTROLS["lincs"])
    sph = Spherizer(device="cpu").fit(lincs_plate[feats])
    with pytest.raises(ValueError, match=rf"{feats[0]!r} is inf in row {other}"):
        sph.transform(df[feats])


def test_constant_feature(bbbc021):
    feats = infer_cp_features(bbbc021)[::5]
    df = bbbc021[["Metadata_Plate", "Metadata_compound"] + feats].copy()
    dmso = df["Metadata_compound"] == "DMSO"
    df.loc[dmso, feats[4]] = 1.0  # constant over the controls, not elsewhere
    q = CONTROLS["bbbc021"]
    # -cor: both raise; phenovec names the feature
    with pytest.raises(ValueError, match="low variance"):
        _peer(df, samples=q, spherize_method="ZCA-cor")
    with pytest.raises(ValueError, match=rf"constant over the 330 fit rows: {feats[4]!r}"):
        spherize(df, samples=q, method="ZCA-cor")
    # PCA/ZCA: no error (peer behaviour), a warning naming it; the constant axis gets sqrt(n-1)/epsilon
    for method in ("ZCA", "PCA"):
        with pytest.warns(SpherizeWarning, match=rf"constant over the spherize fit rows.*{feats[4]}"):
            ours = spherize(df, samples=q, method=method, device="cpu")
        peer = _peer(df, samples=q, spherize_method=method)
        o, p = _feature_block(ours), _feature_block(peer)
        scale = np.abs(p).max()
        diff = _max_diff(p, o, method == "PCA")
        print(f"constant feature {method}: max diff {diff:.3g}, max |output| {scale:.3g}")
        assert diff <= max(ATOL, 1e-12 * scale)
        assert np.abs(o[dmso.to_numpy()]).max() < 1e3  # controls stay finite and moderate
        assert scale > 1e6  # treated wells departing from the constant are amplified ~ sqrt(329)/1e-6


def test_bad_input_errors(bbbc021, lincs_plate):
    feats = infer_cp_features(lincs_plate)
    with pytest.raises(ValueError, match="matches no row"):
        spherize(lincs_plate, samples="Metadata_broad_sample == 'nothing'")
    with pytest.raises(KeyError, match="Cells_nope"):
        spherize(lincs_plate, features=feats[:3] + ["Cells_nope"])
    bad = lincs_plate.copy()
    bad[feats[1]] = bad[feats[1]].astype(object)
    bad.loc[bad.index[5], feats[1]] = "abc"
    with pytest.raises(ValueError, match=rf"{feats[1]!r} is not numeric: row 5"):
        spherize(bad)
    # a group with fewer than 2 fit rows
    one = bbbc021[bbbc021["Metadata_Plate"].isin(sorted(bbbc021["Metadata_Plate"].unique())[:2])].copy()
    drop = one.index[(one["Metadata_compound"] == "DMSO") & (one["Metadata_Plate"] == one["Metadata_Plate"].min())][1:]
    with pytest.raises(ValueError, match=rf"group {one['Metadata_Plate'].min()!r}.*has 1 fit row"):
        spherize(one.drop(index=drop), samples=CONTROLS["bbbc021"], by="Metadata_Plate")
    # missing group value
    miss = one.copy()
    miss.loc[miss.index[2], "Metadata_Plate"] = None
    with pytest.raises(ValueError, match=rf"'Metadata_Plate' is missing in row {miss.index[2]}"):
        spherize(miss, by="Metadata_Plate")
    with pytest.raises(ValueError, match="at least 2 fit rows"):
        Spherizer(method="ZCA").fit(np.ones((1, 3)))
    # duplicated fit rows with n <= d: rank < n - 1, the peer raises too
    x = lincs_plate[feats].iloc[:5]
    x = pd.concat([x, x.iloc[:2]])
    with pytest.raises(ValueError, match="rank"):
        Spherize(method="ZCA").fit(x)
    with pytest.raises(ValueError, match="rank 4, not n - 1 or n"):
        Spherizer(method="ZCA").fit(x)
    with pytest.raises(RuntimeError, match="not fitted"):
        Spherizer().transform(x)


# ------------------------------------------------------------------------------------------ kernels


def test_kernel_loader():
    mod = load_kernel("covariance")
    assert mod.__name__ == "phenovec._kernels.covariance" and load_kernel("covariance") is mod
    assert kernel_path("whiten").parent.name == "kernels"
    assert not (kernel_path("whiten").parent / "__init__.py").exists()
    with pytest.raises(FileNotFoundError, match="no_such_kernel"):
        load_kernel("no_such_kernel")
    assert resolve_device("cpu") == "cpu"
    if cuda_available():
        assert resolve_device("auto") == "cuda"
    else:
        assert resolve_device("auto") == "cpu"
        with pytest.raises(RuntimeError, match="numba.cuda.is_available"):
            resolve_device("cuda")
    with pytest.raises(ValueError):
        resolve_device("tpu")


def test_covariance_cpu_merge_is_two_pass_accurate():
    """Chunked shifted accumulation + Chan merge equals a two-pass float64 covariance (mean >> sd)."""
    cov = load_kernel("covariance")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 6)) + 1e6  # naive X^T X - n m m^T would lose ~all digits here
    n, mean, m2 = cov.accumulate(np.array_split(x, 9), 6, device="cpu")
    xc = x - x.mean(axis=0)
    assert n == 1000
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(m2, xc.T @ xc, rtol=1e-9, atol=1e-9 * np.abs(xc.T @ xc).max())
    np.testing.assert_array_equal(m2, m2.T)


SIM_SCRIPT = r"""
import json, numpy as np
from phenovec.process.kernel_loader import load_kernel, resolve_device
from phenovec.process.spherize import Spherizer
assert resolve_device("auto") == "cuda"
cov = load_kernel("covariance"); wh = load_kernel("whiten")
rng = np.random.default_rng(0)
x = rng.normal(size=(21, 11)) * rng.uniform(0.5, 2, 11) + rng.normal(0, 3, 11)
res = {}
for dtype in (np.float64, np.float32):
    xs = x.astype(dtype)
    a = cov.accumulate([xs[:9], xs[9:], xs[9:9]], 11, device="cuda", tile=8)
    b = cov.accumulate([xs[:9], xs[9:]], 11, device="cpu")
    res[f"cov_{dtype.__name__}"] = [a[0] - b[0], float(np.abs(a[1] - b[1]).max()), float(np.abs(a[2] - b[2]).max() / np.abs(b[2]).max())]
w = rng.normal(size=(11, 11)) / 4
m = x.mean(0); s = x.std(0)
o1 = wh.whiten_cuda(x.astype(np.float32), m, s, w, chunk_rows=8, tile=8)
o2 = wh.whiten_cpu(x.astype(np.float32), m, s, w, chunk_rows=8)
res["whiten_affine"] = float(np.abs(o1 - o2).max())
o1 = wh.whiten_cuda(x[:7], None, None, w[:, :5])
o2 = wh.whiten_cpu(x[:7], None, None, w[:, :5])
res["whiten_plain"] = float(np.abs(o1 - o2).max())
xx = x[:, :5]
g = Spherizer("ZCA-cor", device="cuda").fit_stream([xx[:10], xx[10:]])
c = Spherizer("ZCA-cor", device="cpu").fit_stream([xx[:10], xx[10:]])
res["spherizer"] = float(np.abs(g.transform(xx).to_numpy() - c.transform(xx).to_numpy()).max())
print(json.dumps(res))
"""


def test_cuda_kernels_under_simulator():
    """CUDA kernels (tested only under the Numba CUDA simulator: no GPU here) equal the CPU path to 1e-10."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-c", SIM_SCRIPT], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print("CUDA simulator vs CPU:", res)
    for dtype in ("float64", "float32"):
        dn, dmean, dm2 = res[f"cov_{dtype}"]
        assert dn == 0 and dmean <= 1e-12 and dm2 <= 1e-10
    assert res["whiten_affine"] <= 1e-10 and res["whiten_plain"] <= 1e-10
    assert res["spherizer"] <= 1e-10


# ------------------------------------------------------------------------------------------ solvers


@pytest.mark.parametrize("method", METHODS)
def test_gram_solver_is_taken_only_when_well_conditioned(data, method):
    """solver='auto' uses eigh of the Gram matrix on a well-conditioned tall input (LINCS plate, 384 wells x
    200 features, kappa ~ 1e3) and still equals the peer to <= 1e-8; on BBBC021 (632 wells x 516 raw
    CellProfiler means, kappa ~ 1e6) it falls back to the peer's SVD and is bit-identical."""
    from phenovec.process.spherize import spherize

    lincs = data["lincs"]
    cases = {"lincs": (lincs, [c for c in lincs.columns if not c.startswith("Metadata_")][:200], "gram"),
             "bbbc021": (data["bbbc021"], [c for c in data["bbbc021"].columns if not c.startswith("Metadata_")], "svd")}
    for name, (df, feats, expect) in cases.items():
        assert len(df) > len(feats)
        assert Spherizer(method=method, device="cpu").fit(df[feats]).solver_used_ == expect, name
        peer = _feature_block(_peer(df, features=feats, spherize_method=method))
        pca = method.startswith("PCA")
        diff = _max_diff(peer, _feature_block(spherize(df, features=feats, method=method, device="cpu")), pca)
        assert diff <= (1e-8 if expect == "gram" else 0.0), (name, method, diff)
        exact = spherize(df, features=feats, method=method, device="cpu", solver="svd")
        assert _max_diff(peer, _feature_block(exact), pca) == 0.0
        forced = spherize(df, features=feats, method=method, device="cpu", solver="gram")
        assert _max_diff(peer, _feature_block(forced), pca) <= (1e-8 if expect == "gram" else np.inf)
    with pytest.raises(ValueError, match="solver must be"):
        Spherizer(solver="qr")
