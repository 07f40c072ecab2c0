"""TVN (EFAAR): PCA on controls + per-batch CORAL; after correction each batch's control covariance is the controls'."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import linalg
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from phenovec.batch import BatchFit, tvn
from phenovec.batch.tvn import tvn as tvn_arrays


def _profiles(n_per=60, d=6, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(3):
        mix = rng.normal(size=(d, d)) * 0.5 + np.eye(d) * (1 + b)
        for i in range(n_per):
            ctrl = i % 2 == 0
            x = rng.normal(size=d) @ mix + b * 2 + (0 if ctrl else rng.normal(size=d))
            rows.append({"Metadata_Plate": f"P{b}", "Metadata_pert": "DMSO" if ctrl else f"c{i % 5}",
                         **{f"Cells_f{j}": x[j] for j in range(d)}})
    return pd.DataFrame(rows)


def test_batch_control_covariance_equals_the_controls():
    df = _profiles()
    out = tvn(df, controls="Metadata_pert == 'DMSO'", batch="Metadata_Plate", regularization=0.0)
    pcs = [c for c in out.columns if c.startswith("PC")]
    ctrl = (df["Metadata_pert"] == "DMSO").to_numpy()
    z = out[pcs].to_numpy()
    target = None
    for b in ("P0", "P1", "P2"):
        rows = ctrl & (df["Metadata_Plate"] == b).to_numpy()
        cov = np.cov(z[rows], rowvar=False)
        if target is None:
            target = cov
        np.testing.assert_allclose(cov, target, atol=1e-8)
    # the common covariance is the pooled controls' covariance before CORAL (re-computed by brute force)
    x = df[[c for c in df.columns if c.startswith("Cells_")]].to_numpy()
    s1 = StandardScaler().fit(x[ctrl])
    p = PCA(svd_solver="full").fit(s1.transform(x[ctrl]))
    y = p.transform(s1.transform(x))
    s2 = StandardScaler().fit(y[ctrl])
    y = s2.transform(y)
    np.testing.assert_allclose(target, np.cov(y[ctrl], rowvar=False), atol=1e-8)
    assert not np.allclose(np.cov(y[ctrl & (df["Metadata_Plate"] == "P2").to_numpy()], rowvar=False), target, atol=0.1)
    assert list(out.columns[:2]) == ["Metadata_Plate", "Metadata_pert"] and out.index.equals(df.index)


def test_efaar_whitening_matches_reference_and_fit_reapplies(tmp_path):
    df = _profiles(seed=1)
    ctrl = (df["Metadata_pert"] == "DMSO").to_numpy()
    x = df[[c for c in df.columns if c.startswith("Cells_")]].to_numpy()
    # efaar_benchmarking.tvn_on_controls, written out
    s1 = StandardScaler().fit(x[ctrl])
    e = s1.transform(x)
    e = PCA().fit(e[ctrl]).transform(e)
    e = StandardScaler().fit(e[ctrl]).transform(e)
    ref = e.copy()
    for b in df["Metadata_Plate"].unique():
        bi = (df["Metadata_Plate"] == b).to_numpy()
        cov = np.cov(e[bi & ctrl], rowvar=False, ddof=1) + 0.5 * np.eye(e.shape[1])
        ref[bi] = e[bi] @ np.real(linalg.fractional_matrix_power(cov, -0.5))
    out, fit = tvn(df, controls="Metadata_pert == 'DMSO'", batch="Metadata_Plate", target="identity",
                   return_fit=True)
    z = out[[c for c in out.columns if c.startswith("PC")]].to_numpy()
    scale = np.abs(ref).max()
    # the same sklearn PCA: equal (absolute values guard against a sign convention change between versions)
    np.testing.assert_allclose(np.abs(z), np.abs(ref), atol=1e-8 * scale)
    fit.save(tmp_path / "tvn.npz")
    again = tvn(df, controls="unused == 1", fit=tmp_path / "tvn.npz", batch="Metadata_Plate")
    np.testing.assert_array_equal(again[out.columns[2:]].to_numpy(), z)
    assert isinstance(BatchFit.load(tmp_path / "tvn.npz"), BatchFit)


def test_refusals():
    df = _profiles()
    lonely = df.copy()
    first_p2_ctrl = lonely.index[(lonely["Metadata_Plate"] == "P2") & (lonely["Metadata_pert"] == "DMSO")]
    lonely.loc[first_p2_ctrl[1:], "Metadata_pert"] = "cX"
    with pytest.raises(ValueError, match="batch 'P2' has 1 control row"):
        tvn(lonely, controls="Metadata_pert == 'DMSO'", batch="Metadata_Plate")
    nan = df.copy()
    nan.loc[3, "Metadata_Plate"] = None
    with pytest.raises(ValueError, match="'Metadata_Plate' is missing in row 3"):
        tvn(nan, controls="Metadata_pert == 'DMSO'", batch="Metadata_Plate")
    with pytest.raises(ValueError, match="matches no row"):
        tvn(df, controls="Metadata_pert == 'nothing'", batch="Metadata_Plate")
    x = np.random.default_rng(0).normal(size=(20, 3))
    x[10:] = x[10]  # batch b: identical controls, covariance 0
    with pytest.raises(ValueError, match="batch 'b'.* not positive definite"):
        tvn_arrays(x, np.ones(20, bool), np.repeat(["a", "b"], 10), regularization=0.0)
