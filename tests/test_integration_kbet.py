"""kBET against scib-metrics 0.6.1, its diffusion-space neighbours replaced by the same exact kNN."""
import numpy as np
import pytest

import phenovec.evaluate.integration as pi
from integration_data import scib, scib_neighbors, synthetic



@pytest.fixture
def exact_diffusion_neighbours(monkeypatch):
    import scib_metrics.utils._diffusion_nn as dn

    def exact(X, n_neighbors, **kwargs):
        return scib_neighbors(pi.knn_graph(X, n_neighbors))

    monkeypatch.setattr(dn.nearest_neighbors, "pynndescent", exact)


def test_kbet(exact_diffusion_neighbours):
    X, labels, batches = synthetic(n=450, n_labels=3, batch_shift=0.8, seed=2)
    g = pi.knn_graph(X, 50)
    nn = scib_neighbors(g)
    acc, stats, p = pi.kbet(g, batches)
    ref = scib.kbet(nn, batches)
    assert acc == ref[0]
    np.testing.assert_allclose(stats, ref[1], rtol=1e-5)
    np.testing.assert_allclose(p, ref[2], atol=1e-5)
    ours, df = pi.kbet_per_label(g, batches, labels, return_df=True)
    theirs, ref_df = scib.kbet_per_label(nn, batches, labels, return_df=True)
    assert abs(ours - theirs) < 1e-12
    np.testing.assert_allclose(df["kBET"], ref_df["kBET"], atol=1e-12)
    assert 0 < ours < 1


def test_kbet_skips_small_and_single_batch_labels(exact_diffusion_neighbours):
    X, labels, batches = synthetic(n=300, n_labels=2, seed=4)
    labels = labels.copy()
    labels[:6] = "tiny"  # fewer than 10 rows: NaN, left out of the mean
    batches = batches.copy()
    batches[labels == "moa1"] = "plate0"  # one batch: NaN
    g = pi.knn_graph(X, 50)
    ours, df = pi.kbet_per_label(g, batches, labels, return_df=True)
    theirs, ref_df = scib.kbet_per_label(scib_neighbors(g), batches, labels, return_df=True)
    assert df["kBET"].isna().sum() == 2 and ref_df["kBET"].isna().sum() == 2
    assert abs(ours - theirs) < 1e-12


def test_kbet_refuses_one_batch_as_scib_does():
    X, _, batches = synthetic(n=120, seed=6)
    g = pi.knn_graph(X, 20)
    one = np.full(len(X), "plate0")
    with pytest.raises(ValueError, match="two batches"):
        scib.kbet(scib_neighbors(g), one)
    with pytest.raises(ValueError, match="batches: 1 distinct value"):
        pi.kbet(g, one)
    b = batches.astype(object)
    b[5] = None
    with pytest.raises(ValueError, match="batches: missing value .* row 5"):
        pi.kbet(g, b)


def test_kbet_per_label_in_worker_processes_equals_in_process():
    X, labels, batches = synthetic(n=900, n_labels=3, batch_shift=0.8, seed=5)
    g = pi.knn_graph(X, 50)
    serial, df1 = pi.kbet_per_label(g, batches, labels, return_df=True, n_jobs=1)
    parallel, df2 = pi.kbet_per_label(g, batches, labels, return_df=True, n_jobs=2)
    assert serial == parallel and 0 < serial < 1
    np.testing.assert_array_equal(df1["kBET"], df2["kBET"])
    with pytest.raises(ValueError, match="n_jobs"):
        pi.kbet_per_label(g, batches, labels, n_jobs=0)


def test_kbet_workers_do_not_rerun_an_unguarded_script(tmp_path):
    """A plain script (no ``if __name__ == "__main__":``) calling kbet_per_label with worker processes: the
    workers must not run its top level again (multiprocessing's forkserver did, and died bootstrapping)."""
    import subprocess
    import sys

    script = tmp_path / "plain.py"
    script.write_text(
        "import numpy as np\n"
        "import phenovec.evaluate.integration as pi\n"
        "print('TOP', flush=True)\n"
        "rng = np.random.default_rng(0)\n"
        "X = rng.normal(size=(600, 8)); X[:300] += 3\n"
        "labels = np.repeat(['a', 'b'], 300); batches = np.tile(['p', 'q'], 300)\n"
        "print('SCORE', pi.kbet_per_label(pi.knn_graph(X, 50), batches, labels, n_jobs=2), flush=True)\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("TOP") == 1, run.stdout
    assert "SCORE" in run.stdout


def test_kbet_per_label_small_labels_own_cap_or_scib_carry_over(exact_diffusion_neighbours):
    """Labels of 65-88 rows: scib-metrics caps each label's diffusion components by the rows of every label before
    it (its loop reassigns ``diffusion_n_comps``); ``scib_carry_over=True`` gives its numbers, the default caps each
    label by its own rows, so a label's score no longer depends on the other labels' names."""
    X, labels, batches = synthetic(n=300, n_labels=4, n_batches=3, seed=1)
    g = pi.knn_graph(X, 50)
    nn = scib_neighbors(g)
    sizes = np.unique(labels, return_counts=True)[1]
    assert sizes.max() < 101 and len(set(sizes)) > 1
    theirs, ref_df = scib.kbet_per_label(nn, batches, labels, return_df=True)
    carried, df = pi.kbet_per_label(g, batches, labels, return_df=True, scib_carry_over=True)
    np.testing.assert_allclose(df["kBET"], ref_df["kBET"], atol=1e-12)
    assert abs(carried - theirs) < 1e-12
    own, own_df = pi.kbet_per_label(g, batches, labels, return_df=True)
    assert not np.allclose(own_df["kBET"], ref_df["kBET"])  # this data shows the difference
    # the label whose score differs most, renamed to sort first: scib's loop then caps it by its own rows only,
    # so scib's numbers become the default's, and the default's do not move
    moved = own_df["cluster"][np.argmax(np.abs(own_df["kBET"] - ref_df["kBET"]))]
    renamed = np.where(labels == moved, "a_" + str(moved), labels)
    again = pi.kbet_per_label(g, batches, renamed)
    assert abs(again - own) < 1e-12
    assert abs(scib.kbet_per_label(nn, batches, renamed) - own) < 1e-12
