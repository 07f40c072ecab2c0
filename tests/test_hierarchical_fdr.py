"""Hierarchical FDR against copairs 0.5.5 itself, on the same input (1e-12)."""
import numpy as np
import pandas as pd
import pytest
from copairs.map import apply_hierarchical_fdr_correction as cp_hfdr
from copairs.map import mean_average_precision_hierarchical as cp_map_h

import phenovec.evaluate as pe
from phenovec.evaluate.hierarchical_fdr import hierarchical_fdr, mean_average_precision_hierarchical


def assert_frames_close(ours: pd.DataFrame, theirs: pd.DataFrame):
    assert list(ours.columns) == list(theirs.columns)
    assert len(ours) == len(theirs)
    for c in theirs.columns:
        a, b = ours[c].to_numpy(), theirs[c].to_numpy()
        if c == "indices":
            assert [list(x) for x in a] == [list(x) for x in b]
        elif np.issubdtype(np.asarray(b).dtype, np.floating):
            np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=0, atol=1e-12, err_msg=c)
        else:
            np.testing.assert_array_equal(a, b, err_msg=c)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correction_matches_copairs_on_random_p_values(seed):
    rng = np.random.default_rng(seed)
    n_cpd, n_dose = 60, 4
    cpd = np.repeat([f"c{k:02d}" for k in range(n_cpd)], n_dose)
    dose = np.tile(np.arange(n_dose), n_cpd)
    # some compounds active at high doses; single-dose compounds included (dropped rows)
    p = rng.uniform(size=len(cpd)) ** np.where((dose >= 2) & (np.arange(len(cpd)) % 7 < 3), 8, 1)
    df = pd.DataFrame({"Metadata_cpd": cpd, "Metadata_dose": dose, "p_value": p})
    df = df.drop(index=df.index[(df["Metadata_cpd"] < "c05") & (df["Metadata_dose"] > 0)]).reset_index(drop=True)
    ours = hierarchical_fdr(df, ["Metadata_cpd"], ["Metadata_cpd", "Metadata_dose"])
    theirs = cp_hfdr(df, ["Metadata_cpd"], ["Metadata_cpd", "Metadata_dose"])
    assert_frames_close(ours, theirs)
    assert 0 < ours["stage1_significant"].sum() < n_cpd * n_dose  # both outcomes occur: the test can tell


def test_map_hierarchical_matches_copairs_on_bbbc021(bbbc021, tmp_path):
    meta = bbbc021.filter(regex="^Metadata_").reset_index(drop=True)
    feats = bbbc021.drop(columns=meta.columns).to_numpy(dtype=np.float64)
    keep = (meta["Metadata_compound"] != "DMSO").to_numpy()
    meta["Metadata_dmso"] = np.where(keep, -1, np.arange(len(meta)))
    rules = dict(pos_sameby=["Metadata_compound", "Metadata_concentration", "Metadata_dmso"], pos_diffby=[],
                 neg_sameby=[], neg_diffby=["Metadata_compound", "Metadata_dmso"])
    ap = pe.average_precision(meta, feats, **rules)
    sameby, hier = ["Metadata_compound", "Metadata_concentration"], ["Metadata_compound"]
    ours = mean_average_precision_hierarchical(ap, sameby, null_size=1000, threshold=0.05, seed=0,
                                               hierarchical_by=hier, progress_bar=False)
    theirs = cp_map_h(ap, sameby, null_size=1000, threshold=0.05, seed=0, hierarchical_by=hier,
                      progress_bar=False, cache_dir=tmp_path)
    assert_frames_close(ours, theirs)
    assert ours["below_corrected_p"].any() and not ours["below_corrected_p"].all()


def test_bad_hierarchy_is_refused():
    df = pd.DataFrame({"a": [1, 1], "b": [1, 2], "p_value": [0.1, 0.2]})
    with pytest.raises(ValueError, match="subset"):
        hierarchical_fdr(df, ["c"], ["a", "b"])
    with pytest.raises(ValueError, match="proper subset"):
        hierarchical_fdr(df, ["a", "b"], ["a", "b"])
    with pytest.raises(KeyError, match="p_value"):
        hierarchical_fdr(df.drop(columns="p_value"), ["a"], ["a", "b"])
