"""knn_accuracy: leave-one-compound-out k-NN MOA prediction (MOAProfiler protocol) on BBBC021.

BBBC021 per-well means (cytominergallery) joined to the image table on plate + well and to the MOA
table on compound + concentration, as its README says; DMSO wells dropped; features z-scored over
the remaining wells. References: a brute-force numpy implementation of the documented rule and,
for 1-NN (no vote), sklearn's KNeighborsClassifier fitted once per held-out compound.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from phenovec.evaluate import knn_accuracy

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bbbc021-cytominergallery"


@pytest.fixture(scope="module")
def bbbc021():
    prof = pd.read_csv(DATA / "ljosa_jbiomolscreen_2013_per_well_mean.csv.gz")
    img = pd.read_csv(DATA / "BBBC021_v1_image.csv.gz")
    moa = pd.read_csv(DATA / "BBBC021_v1_moa.csv")
    wells = img[["Image_Metadata_Plate_DAPI", "Image_Metadata_Well_DAPI", "Image_Metadata_Compound",
                 "Image_Metadata_Concentration"]].drop_duplicates()
    wells.columns = ["Image_Metadata_Plate", "Image_Metadata_Well", "compound", "concentration"]
    df = prof.merge(wells, on=["Image_Metadata_Plate", "Image_Metadata_Well"], validate="one_to_one")
    df = df.merge(moa, on=["compound", "concentration"], validate="many_to_one")
    assert len(df) == 632
    df = df[df["compound"] != "DMSO"].reset_index(drop=True)
    assert len(df) == 302 and df["compound"].nunique() == 38 and df["moa"].nunique() == 12
    feats = [c for c in prof.columns if not c.startswith("Image_")]
    x = df[feats].to_numpy(float)
    x = (x - x.mean(0)) / x.std(0)
    return df[["Image_Metadata_Plate", "Image_Metadata_Well", "compound", "concentration", "moa"]], x


def reference(meta, x, k_list, metric, exclude=()):
    """Brute force: full similarity matrix, Python sort and vote with the documented tie rules."""
    if metric == "cosine":
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
    else:  # pearson
        c = x - x.mean(1, keepdims=True)
        u = c / np.linalg.norm(c, axis=1, keepdims=True)
    s = u @ u.T
    comp = meta["compound"].to_numpy()
    ex = [meta[c].to_numpy() for c in exclude]
    labels = meta["moa"].to_numpy()
    preds = {k: [] for k in k_list}
    for i in range(len(meta)):
        cand = [j for j in range(len(meta)) if comp[j] != comp[i] and all(e[j] != e[i] for e in ex)]
        cand.sort(key=lambda j: (-s[i, j], j))
        for k in k_list:
            top = [labels[j] for j in cand[:k]]
            counts = Counter(top)
            best = max(counts.values())
            preds[k].append(next(lab for lab in top if counts[lab] == best))  # tied class nearest first
    return preds


@pytest.mark.parametrize("metric,exclude", [("cosine", ()), ("pearson", ()), ("cosine", ("Image_Metadata_Plate",))])
def test_matches_bruteforce_reference(bbbc021, metric, exclude):
    meta, x = bbbc021
    ks = [1, 2, 3, 5, 10]
    summary, pred = knn_accuracy(meta, x, moa_col="moa", compound_col="compound", k=ks,
                                 exclude_same=list(exclude) or None, similarity_metric=metric)
    ref = reference(meta, x, ks, metric, exclude)
    assert summary["k"].tolist() == ks
    y = meta["moa"].to_numpy()
    for k in ks:
        p = pred[pred["k"] == k]
        assert p["row"].tolist() == list(range(len(meta)))
        assert p["predicted"].tolist() == ref[k], k
        row = summary.set_index("k").loc[k]
        assert row["accuracy"] == pytest.approx(np.mean(np.array(ref[k]) == y), abs=1e-12)
        assert row["f1_weighted"] == pytest.approx(f1_score(y, ref[k], average="weighted", zero_division=0), abs=1e-12)
        assert row["n_queries"] == len(meta)
    # not-same-compound 1-NN on per-well means: far above chance (1/12)
    assert summary.set_index("k").loc[1, "accuracy"] > 0.7


def test_one_nn_matches_sklearn_kneighbors(bbbc021):
    meta, x = bbbc021
    y = meta["moa"].to_numpy()
    comp = meta["compound"].to_numpy()
    expected = np.empty(len(y), dtype=object)
    for c in np.unique(comp):
        held = comp == c
        clf = KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute").fit(x[~held], y[~held])
        expected[held] = clf.predict(x[held])
    _, pred = knn_accuracy(meta, x, moa_col="moa", compound_col="compound", k=1, similarity_metric="cosine")
    assert pred["predicted"].tolist() == expected.tolist()
    # and the same with a tiny block size (many similarity blocks)
    _, pred2 = knn_accuracy(meta, x, moa_col="moa", compound_col="compound", k=1, block_bytes=5 * len(x) * 8,
                            similarity_metric="cosine")
    pd.testing.assert_frame_equal(pred, pred2)


def test_k_all(bbbc021):
    meta, x = bbbc021
    sub = meta["moa"].isin(["Actin disruptors", "Kinase inhibitors", "Eg5 inhibitors"]).to_numpy()
    m, xs = meta[sub].reset_index(drop=True), x[sub]
    summary, pred = knn_accuracy(m, xs, moa_col="moa", compound_col="compound", k="all", similarity_metric="cosine")
    max_cand = len(m) - m["compound"].value_counts().min()
    assert summary["k"].tolist() == list(range(1, max_cand + 1))
    ref = reference(m, xs, list(range(1, max_cand + 1)), "cosine")
    for k in range(1, max_cand + 1):
        assert pred.loc[pred["k"] == k, "predicted"].tolist() == ref[k], k


def test_tie_rules():
    # query q (row 0, compound Q) and five candidates; cosine similarities to q decrease with angle
    ang = np.array([0.0, 0.1, 0.2, 0.2, 0.3, 0.4])
    x = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    meta = pd.DataFrame({"compound": ["Q", "c1", "c2", "c3", "c4", "c5"],
                         "moa": ["m0", "A", "B", "C", "C", "A"]})
    _, pred = knn_accuracy(meta, x, moa_col="moa", compound_col="compound", k=[1, 2, 3, 4, 5],
                           similarity_metric="cosine")
    q = pred[pred["row"] == 0].set_index("k")["predicted"]
    assert q[1] == "A"
    assert q[2] == "A"  # A and B tie 1-1: A's neighbour is nearer
    assert q[3] == "A"  # A, B, C: three-way tie, A nearest
    assert q[4] == "C"  # C has two
    assert q[5] == "A"  # A 2 (ranks 1, 5), C 2 (ranks 3, 4): A's best-ranked neighbour is nearer
    # equal similarities: the lower row ranks first (rows 1 and 2 are the same profile)
    x2 = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    for moas in (["M", "Y", "Z"], ["M", "Z", "Y"]):
        m = pd.DataFrame({"compound": ["q", "r1", "r2"], "moa": moas})
        _, p = knn_accuracy(m, x2, moa_col="moa", compound_col="compound", k=1, similarity_metric="cosine")
        assert p.loc[p["row"] == 0, "predicted"].item() == moas[1]


def test_fewer_candidates_than_k_uses_all():
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    meta = pd.DataFrame({"compound": ["a", "a", "b", "c"], "moa": ["X", "X", "Y", "Y"],
                         "plate": [1, 2, 1, 2]})
    summary, pred = knn_accuracy(meta, x, moa_col="moa", compound_col="compound", k=[1, 2], exclude_same="plate",
                                 similarity_metric="cosine")
    # row 0 (plate 1): candidates are other compounds on other plates: only row 3
    assert pred.loc[pred["row"] == 0, "n_candidates"].tolist() == [1, 1]
    assert pred.loc[pred["row"] == 0, "predicted"].tolist() == ["Y", "Y"]
    assert summary["accuracy"].tolist() == [0.5, 0.5]


def test_bad_input():
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    meta = pd.DataFrame({"compound": ["a", "a", "b", "c"], "moa": ["X", "X", "Y", "Y"], "plate": [1, 1, 1, 2]})
    kw = dict(moa_col="moa", compound_col="compound", similarity_metric="cosine")
    with pytest.raises(KeyError, match="moa_col: unknown metadata column 'nope'"):
        knn_accuracy(meta, x, **(kw | dict(moa_col="nope")))
    with pytest.raises(KeyError, match="exclude_same"):
        knn_accuracy(meta, x, **kw, exclude_same=["nope"])
    with pytest.raises(ValueError, match="k must hold positive integers"):
        knn_accuracy(meta, x, **kw, k=[0])
    with pytest.raises(ValueError, match="'all'"):
        knn_accuracy(meta, x, **kw, k="every")
    with pytest.raises(ValueError, match="k = 4 exceeds"):
        knn_accuracy(meta, x, **kw, k=4)
    with pytest.raises(ValueError, match=r"row 0 \(compound = 'a'\) has no candidate.*\(4 such rows\)"):
        knn_accuracy(meta.assign(plate=1), x, **kw, k=1, exclude_same="plate")
    with pytest.raises(ValueError, match="row 0"):
        knn_accuracy(meta.assign(compound="same"), x, **kw, k=1)
    m = meta.copy()
    m.loc[1, "moa"] = None
    with pytest.raises(ValueError, match="'moa' has a missing value at row 1"):
        knn_accuracy(m, x, **kw, k=1)
    y = x.copy()
    y[2, 0] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        knn_accuracy(meta, y, **kw, k=1)
    y = x.copy()
    y[3] = 0.0
    with pytest.raises(ValueError, match="row 3"):
        knn_accuracy(meta, y, **kw, k=1)
    with pytest.raises(ValueError, match="unknown similarity metric"):
        knn_accuracy(meta, x, **(kw | dict(similarity_metric="kendall")), k=1)
    with pytest.raises(ValueError, match="leave_out must be"):
        knn_accuracy(meta, x, **kw, k=1, leave_out="plate")


def test_default_is_the_papers_pcc_and_leave_out_well(bbbc021):
    """The default metric is PCC (the paper's); leave_out="well" keeps the query's own compound as candidates."""
    meta, x = bbbc021
    a, pa = knn_accuracy(meta, x, moa_col="moa", compound_col="compound", k=[1, 3])
    b, pb = knn_accuracy(meta, x, moa_col="moa", compound_col="compound", k=[1, 3], similarity_metric="pearson")
    pd.testing.assert_frame_equal(a, b)
    _, pw = knn_accuracy(meta, x, moa_col="moa", compound_col="compound", k=[1, 3, 5], leave_out="well")
    # the paper's protocol equals "not same compound" on a column unique per row
    uniq = meta.assign(uid=np.arange(len(meta)))
    _, pu = knn_accuracy(uniq, x, moa_col="moa", compound_col="uid", k=[1, 3, 5])
    assert pw["predicted"].tolist() == pu["predicted"].tolist()
    assert (pw["n_candidates"] == len(meta) - 1).all()
    ref = reference(uniq.rename(columns={"compound": "c0", "uid": "compound"}), x, [1, 3, 5], "pearson")
    for k in (1, 3, 5):
        assert pw.loc[pw["k"] == k, "predicted"].tolist() == ref[k]
    # replicates of the same compound are the nearest wells: accuracy rises above not-same-compound
    assert pw.loc[pw["k"] == 1, "correct"].mean() > pb.loc[pb["k"] == 1, "correct"].mean()
