"""phenovec.batch.run_harmony against harmonypy 2.1.0 itself (same input, same seed: same initial centroids, same
cell orders), with its own seed (close), and its refusals."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from phenovec.batch.harmony import harmony_initial_centroids, run_harmony
from phenovec.process.kernel_loader import load_kernel

import harmonypy  # the peer, pinned in requirements/ci.txt: missing is a failure, not a skip
logging.getLogger("harmonypy").setLevel(logging.WARNING)


def _data(n=1200, d=12, seed=0):
    rng = np.random.default_rng(seed)
    meta = pd.DataFrame({
        "Metadata_Plate": rng.integers(0, 5, n).astype(str),
        "Metadata_Row": rng.choice(["A", "B", "C"], n),
        "Metadata_Source": rng.integers(0, 2, n),
    })
    x = rng.normal(size=(6, d))[rng.integers(0, 6, n)] * 2 + rng.normal(size=(n, d))
    for col, s in (("Metadata_Plate", 1.0), ("Metadata_Row", 0.5), ("Metadata_Source", 1.5)):
        codes = pd.factorize(meta[col])[0]
        x += (rng.normal(size=(codes.max() + 1, d)) * s)[codes]
    return x, meta


def _spread(z, labels):
    """Mean distance of the batches' means from the overall mean."""
    mu = z.mean(axis=0)
    return float(np.mean([np.linalg.norm(z[labels == b].mean(axis=0) - mu) for b in np.unique(labels)]))


def assert_matches(ours, ref, z_rel=1e-6, rtol=1e-5, atol=1e-6):
    """Our Harmony result equals harmonypy's: Z_corr (relative to its largest entry), iterations, objectives, R, Y."""
    assert np.abs(ours.Z_corr - ref.Z_corr).max() <= z_rel * np.abs(ref.Z_corr).max()
    assert ours.kmeans_rounds == list(ref.kmeans_rounds)
    np.testing.assert_allclose(ours.objective_harmony, ref.objective_harmony, rtol=rtol)
    np.testing.assert_allclose(ours.objective_kmeans, ref.objective_kmeans, rtol=rtol)
    np.testing.assert_allclose(ours.R, ref.R, atol=atol)
    np.testing.assert_allclose(ours.Y, ref.Y, atol=atol)
    assert ours.K == ref.K


@pytest.mark.parametrize("vars_use,kw", [
    (["Metadata_Plate"], {}),
    (["Metadata_Plate", "Metadata_Row"], {"theta": [2.0, 1.0], "random_state": 3}),
    (["Metadata_Plate", "Metadata_Row", "Metadata_Source"], {"nclust": 20, "max_iter_kmeans": 6}),
    (["Metadata_Plate", "Metadata_Row"], {"lamb": 1.0, "sigma": 0.2, "block_size": 0.1, "tau": 5}),
    # a high cutoff: clusters correct only some batches (the ridge systems' inert rows), some none
    (["Metadata_Plate", "Metadata_Row"], {"batch_prop_cutoff": 0.03}),
    (["Metadata_Plate"], {"batch_prop_cutoff": 0.03, "lamb": 0.5}),
])
def test_equals_harmonypy(vars_use, kw):
    x, meta = _data()
    ref = harmonypy.run_harmony(x, meta, vars_use, verbose=False, **kw)
    ours = run_harmony(x, meta, vars_use, **kw)
    assert ours.Z_corr.shape == ref.Z_corr.shape == x.shape
    assert_matches(ours, ref)


def test_more_pcs_and_clusters_than_one_accumulator_chunk_equal_harmonypy():
    """The correction sums 64 dimensions and the plain assignment 64 clusters at a time (kernels' ACC_CHUNK): with
    70 PCs and 70 clusters both take two chunks, the second mostly padding; the result is harmonypy's."""
    x, meta = _data(n=2100, d=70, seed=4)
    ref = harmonypy.run_harmony(x, meta, ["Metadata_Plate", "Metadata_Row"], verbose=False, nclust=70,
                                max_iter_harmony=3)
    ours = run_harmony(x, meta, ["Metadata_Plate", "Metadata_Row"], nclust=70, max_iter_harmony=3)
    assert load_kernel("harmony").ACC_CHUNK < 70
    assert_matches(ours, ref)


def test_many_clusters_run_in_a_thread_with_a_large_stack(monkeypatch):
    """Above STACK_CLUSTERS clusters Harmony runs in a helper thread (the assignment kernel keeps its scratch on the
    stack): same result as harmonypy, and errors still reach the caller."""
    import importlib
    import threading

    module = importlib.import_module("phenovec.batch.harmony")  # the package also exports a function named harmony

    monkeypatch.setattr(module, "STACK_CLUSTERS", 5)
    seen = []
    real = module._harmonize

    def spy(*args):
        seen.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(module, "_harmonize", spy)
    x, meta = _data()
    ref = harmonypy.run_harmony(x, meta, ["Metadata_Plate"], verbose=False, nclust=12)
    ours = run_harmony(x, meta, ["Metadata_Plate"], nclust=12)
    assert seen == ["phenovec-harmony"]
    assert_matches(ours, ref)
    with pytest.raises(FloatingPointError, match="singular"):
        run_harmony(x, meta, ["Metadata_Plate"], nclust=12, lamb=0.0)


def _needs_two_numba_threads():
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip(f"needs 2 CPU threads for Numba's pool; this machine gives {numba.config.NUMBA_NUM_THREADS}")


@pytest.mark.parametrize("nclust,parallel", [(20, True), (30, False)])
def test_runs_on_threads_equal_harmonypy(monkeypatch, nclust, parallel):
    """With 2 Numba threads a block's lead runs are reassigned in parallel (up to WORKER_STACK_CLUSTERS clusters, 25
    here; above it the pass stays on the calling thread): the same result as harmonypy either way."""
    import importlib

    _needs_two_numba_threads()
    module = importlib.import_module("phenovec.batch.harmony")
    monkeypatch.setattr(module, "WORKER_STACK_CLUSTERS", 25)
    kern = load_kernel("harmony")
    seen = []
    real = kern.update_assignments

    def spy(*args):
        seen.append(args[12])  # parallel
        return real(*args)

    monkeypatch.setattr(kern, "update_assignments", spy)
    x, meta = _data()
    vars_use = ["Metadata_Plate", "Metadata_Row"]
    ref = harmonypy.run_harmony(x, meta, vars_use, verbose=False, nclust=nclust)
    ours = run_harmony(x, meta, vars_use, nclust=nclust, ncores=2)
    assert seen and set(seen) == {parallel}
    assert_matches(ours, ref)


@pytest.mark.parametrize("ncores", [1, 2])
def test_packed_and_run_by_run_passes_equal_harmonypy(monkeypatch, ncores):
    """A block's lead cells reassigned packed 16 to a step whatever their batch (PACK_BELOW_RUN above any run) or run
    by run (0): both equal harmonypy, and each other bit for bit, on one thread and on two."""
    import importlib

    if ncores > 1:
        _needs_two_numba_threads()
    module = importlib.import_module("phenovec.batch.harmony")
    x, meta = _data()
    vars_use = ["Metadata_Plate", "Metadata_Row", "Metadata_Source"]
    ref = harmonypy.run_harmony(x, meta, vars_use, verbose=False, nclust=20, block_size=0.2)
    results = []
    for pack_below in (0, 10**6):
        monkeypatch.setattr(module, "PACK_BELOW_RUN", pack_below)
        results.append(run_harmony(x, meta, vars_use, nclust=20, block_size=0.2, ncores=ncores))
        assert_matches(results[-1], ref)
    np.testing.assert_array_equal(results[0].Z_corr, results[1].Z_corr)
    np.testing.assert_array_equal(results[0].R, results[1].R)


def _kernel_calls_that_compile_twice(source: str) -> list[str]:
    """Calls, inside the kernels, of another compiled (not inlined) kernel with an int constant, a variable first set
    to one, or a ``prange`` index as an argument: Numba compiles the callee again for ``Literal[int]`` / ``uint64``
    beside its ``int64`` version."""
    import ast

    tree = ast.parse(source)
    compiled = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and getattr(dec.func, "id", "") == "njit" and not any(
                        kw.arg == "inline" for kw in dec.keywords):
                    compiled.add(node.name)
    found = []
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in compiled):
        prange_vars = {loop.target.id for loop in ast.walk(fn) if isinstance(loop, ast.For)
                       and isinstance(loop.iter, ast.Call) and getattr(loop.iter.func, "id", "") == "prange"}
        # a variable first set to an int constant is typed Literal[int] too, until Numba unifies it (n = 0; n = f(n))
        int_vars = {t.id for a in ast.walk(fn) if isinstance(a, ast.Assign) and isinstance(a.value, ast.Constant)
                    and isinstance(a.value.value, int) for t in a.targets if isinstance(t, ast.Name)}
        for call in ast.walk(fn):
            if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) in compiled):
                continue
            for arg in call.args:
                if (isinstance(arg, ast.Constant) and isinstance(arg.value, int)) or (
                        isinstance(arg, ast.Name) and arg.id in prange_vars | int_vars):
                    found.append(f"{fn.name} -> {call.func.id}({ast.unparse(arg)}), line {call.lineno}")
    return found


def test_kernels_call_each_other_with_int64_arguments_only():
    """A first Harmony call compiles each kernel once: no kernel passes an int constant, a variable first set to one
    or a prange index (typed uint64) to another compiled kernel, which would compile it a second time (session 31:
    230 -> 125 compilations, ~20 s of a first call). The check can fail: it finds the calls the kernels made before."""
    from pathlib import Path

    source = Path(load_kernel("harmony").__file__).read_text()
    assert _kernel_calls_that_compile_twice(source) == []
    before = source.replace("_reassign_run(np.int64(q), r,", "_reassign_run(q, r,").replace(
        "j = _bounded(mt, np.int64(2))", "j = _bounded(mt, 2)")
    assert len(_kernel_calls_that_compile_twice(before)) == 2


@pytest.mark.parametrize("ncores", [1, 2])
def test_batches_over_1024_cells_in_a_block_equal_harmonypy_bit_for_bit(ncores):
    """Blocks of 3,000 cells with ~1,500 of a batch: harmonypy sums each batch's cells in runs of at most 1,024 (its
    task size), and so do the block sums here (a cell's run is its batch's first run + its place // 1024): R and
    Z_corr equal harmonypy's exactly."""
    if ncores > 1:
        _needs_two_numba_threads()
    x, meta = _data(n=6000, d=10)
    kw = {"nclust": 10, "block_size": 0.5}
    ref = harmonypy.run_harmony(x, meta, ["Metadata_Source", "Metadata_Row"], verbose=False, **kw)
    ours = run_harmony(x, meta, ["Metadata_Source", "Metadata_Row"], ncores=ncores, **kw)
    assert meta["Metadata_Source"].value_counts().min() * kw["block_size"] > 1024
    assert_matches(ours, ref)
    if _host_has_fma():  # glibc's expf / logf builds for this CPU are the ones the kernels reproduce bit for bit
        np.testing.assert_array_equal(ours.R, ref.R)
        np.testing.assert_array_equal(ours.Z_corr, ref.Z_corr)
        assert ours.objective_kmeans == list(ref.objective_kmeans)


def test_initial_centroids_are_harmonypys_and_can_be_given():
    x, meta = _data(seed=1)
    ref0 = harmonypy.run_harmony(x, meta, ["Metadata_Plate"], verbose=False, max_iter_harmony=0, random_state=5)
    z = x.astype(np.float32)
    load_kernel("harmony").normalise_rows(z)
    init, _ = harmony_initial_centroids(z, ref0.K, random_state=5)
    y = init / np.linalg.norm(init, axis=1, keepdims=True)
    np.testing.assert_allclose(y.T, ref0.Y, atol=1e-6)
    # the screens' products in a caller's scratch array (Harmony lends its distance matrix): the same centroids
    scratch = np.full((len(z), ref0.K), np.nan, np.float32)
    np.testing.assert_array_equal(harmony_initial_centroids(z, ref0.K, random_state=5, scratch=scratch)[0], init)
    assert not np.isnan(scratch).all()
    with pytest.raises(ValueError, match="scratch must be a contiguous float32 array of at least"):
        harmony_initial_centroids(z, ref0.K, random_state=5, scratch=scratch[:-1])
    # given centroids = harmonypy's own: the run is harmonypy's
    ref = harmonypy.run_harmony(x, meta, ["Metadata_Plate"], verbose=False, random_state=5)
    ours = run_harmony(x, meta, ["Metadata_Plate"], random_state=5, init_centroids=init)
    assert np.abs(ours.Z_corr - ref.Z_corr).max() <= 1e-6 * np.abs(ref.Z_corr).max()
    np.testing.assert_allclose(ours.objective_harmony, ref.objective_harmony, rtol=1e-5)
    # other centroids change the run
    other = run_harmony(x, meta, ["Metadata_Plate"], random_state=5, init_centroids=init[::-1].copy() + 0.3)
    assert np.abs(other.Z_corr - ref.Z_corr).max() > 1e-3


def test_own_seed_corrects_as_harmonypy():
    x, meta = _data(n=1500, seed=2)
    vars_use = ["Metadata_Plate", "Metadata_Source"]
    ref = harmonypy.run_harmony(x, meta, vars_use, verbose=False, random_state=0)
    ours = run_harmony(x, meta, vars_use, random_state=11)
    assert np.abs(ours.Z_corr - ref.Z_corr).max() > 1e-6  # another seed: another run
    for col in vars_use:
        labels = meta[col].to_numpy()
        raw, theirs, mine = _spread(x, labels), _spread(ref.Z_corr, labels), _spread(ours.Z_corr, labels)
        assert theirs < 0.5 * raw and mine < 0.5 * raw
        assert abs(mine - theirs) <= 0.25 * theirs + 0.02 * raw


def test_generator_is_mt19937():
    kern = load_kernel("harmony")
    mt = kern.mt_seed(12345)
    ours = np.array([kern.mt_next(mt) for _ in range(2000)], dtype=np.uint64)
    bg = np.random.MT19937()
    bg._legacy_seeding(12345)
    np.testing.assert_array_equal(ours, bg.random_raw(2000))
    # uniform draws in pieces that start and end inside and across twists, mixed with single words
    mt = kern.mt_seed(12345)
    bg = np.random.MT19937()
    bg._legacy_seeding(12345)
    for size in (1, 623, 700, 5, 1248, 3):
        out = np.empty(size, np.float32)
        kern.mt_uniform01(mt, out)
        want = bg.random_raw(size).astype(np.float32) / np.float32(2.0**32)
        np.testing.assert_array_equal(out, np.minimum(want, np.nextafter(np.float32(1), np.float32(0))))
        assert kern.mt_next(mt) == bg.random_raw(1)[0]
    # a shuffle is a permutation, and the two libstdc++ paths (pairs below 65536 elements) both run
    for n in (10, 11, 70000):
        p = kern.mt_shuffled_range(kern.mt_seed(1), n)
        assert np.array_equal(np.sort(p), np.arange(n)) and not np.array_equal(p, np.arange(n))


def _libstdcxx_shuffle(words, n):
    """libstdc++ 14 ``std::shuffle(0..n-1)`` for n * n >= 2**32 (one position per draw), written plainly from the
    generator's 32-bit words: Lemire's bounded integers (``uniform_int_distribution::_S_nd``), swap by swap."""
    a = list(range(n))
    for i in range(1, n):
        r = i + 1
        product = next(words) * r
        if product & 0xFFFFFFFF < r:
            threshold = (2**32 - r) % r
            while product & 0xFFFFFFFF < threshold:
                product = next(words) * r
        j = product >> 32
        a[i], a[j] = a[j], a[i]
    return np.array(a)


@pytest.mark.parametrize("n", [65536, 70001])
def test_large_shuffles_are_libstdcxx_swap_by_swap(n):
    """Large shuffles draw their swap positions ahead of the swaps (to ask for the elements early): the same
    permutations and generator state as the plain loop, twice in a row from one generator."""
    kern = load_kernel("harmony")
    mt = kern.mt_seed(3)
    bg = np.random.MT19937()
    bg._legacy_seeding(3)

    def draw():
        while True:
            yield from (int(w) for w in bg.random_raw(4096))

    words = draw()
    for _ in range(2):
        np.testing.assert_array_equal(kern.mt_shuffled_range(mt, n), _libstdcxx_shuffle(words, n))
    assert kern.mt_next(mt) == next(words)


def test_refusals_name_the_problem():
    x, meta = _data(n=300)
    one = meta.copy()
    one.loc[0, "Metadata_Plate"] = "lonely"
    with pytest.raises(ValueError, match=r"'Metadata_Plate'.*'lonely' has 1 row"):
        run_harmony(x, one, ["Metadata_Plate"])
    nan = meta.copy()
    nan["Metadata_Row"] = nan["Metadata_Row"].astype(object)
    nan.loc[7, "Metadata_Row"] = None
    with pytest.raises(ValueError, match=r"'Metadata_Row' is missing .* row 7"):
        run_harmony(x, nan, ["Metadata_Plate", "Metadata_Row"])
    with pytest.raises(ValueError, match="nclust = 301 clusters for 300 cells"):
        run_harmony(x, meta, ["Metadata_Plate"], nclust=301)
    with pytest.raises(KeyError, match="'Metadata_Well' is not a column"):
        run_harmony(x, meta, ["Metadata_Well"])
    bad = x.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="row 4, column 2"):
        run_harmony(bad, meta, ["Metadata_Plate"])
    with pytest.raises(ValueError, match="theta must be"):
        run_harmony(x, meta, ["Metadata_Plate"], theta=[1.0, 2.0, 3.0])
    for sigma in (0.0, -0.1, float("nan"), 1e-46):  # 1e-46 is 0 as a float32
        with pytest.raises(ValueError, match=r"sigma must be finite and positive .* cluster 0"):
            run_harmony(x, meta, ["Metadata_Plate"], sigma=sigma)
    with pytest.raises(ValueError, match=r"cluster 2"):
        run_harmony(x, meta, ["Metadata_Plate"], nclust=4, sigma=[0.1, 0.1, 0.0, 0.1])


def test_inputs_read_as_harmonypy_reads_them():
    """A categorical batch column whose categories are not in sorted order (per-batch theta / lamb follow the sorted
    labels, as harmonypy's ``_factorize``; they followed the categories' order), a square data matrix (PCs x
    cells, harmonypy's reading), ``random_state=None`` (seed 0) and a C-contiguous ``Y``."""
    x, meta = _data(n=300)
    cat = meta.assign(Metadata_Plate=pd.Categorical(meta["Metadata_Plate"], categories=["4", "3", "2", "1", "0", "9"]))
    for kw in ({"theta": [0.5, 1, 2, 4, 8]}, {"lamb": [0.1, 1, 5, 10, 0.5]}):
        ref = harmonypy.run_harmony(x, meta, "Metadata_Plate", verbose=False, **kw)
        assert np.array_equal(run_harmony(x, cat, "Metadata_Plate", **kw).Z_corr, ref.Z_corr)
        assert np.array_equal(harmonypy.run_harmony(x, cat, "Metadata_Plate", verbose=False, **kw).Z_corr, ref.Z_corr)
    sq, sq_meta = x[:, :12][:12], meta.iloc[:12].assign(Metadata_Plate=list("aabbccaabbcc"))
    ref = harmonypy.run_harmony(sq, sq_meta, "Metadata_Plate", nclust=2, verbose=False)
    ours = run_harmony(sq, sq_meta, "Metadata_Plate", nclust=2)
    assert np.array_equal(ours.Z_orig, ref.Z_orig) and np.array_equal(ours.Z_orig, sq.T.astype(np.float32))
    assert np.array_equal(ours.Z_corr, ref.Z_corr)
    none = run_harmony(x, meta, "Metadata_Plate", random_state=None)
    assert np.array_equal(none.Z_corr, run_harmony(x, meta, "Metadata_Plate", random_state=0).Z_corr)
    assert np.array_equal(none.Z_corr, harmonypy.run_harmony(x, meta, "Metadata_Plate", random_state=None,
                                                             verbose=False).Z_corr)
    assert none.Y.flags.c_contiguous and np.array_equal(none.Y, harmonypy.run_harmony(
        x, meta, "Metadata_Plate", verbose=False).Y)


@pytest.mark.parametrize("device", [None, "cpu"])
def test_verbose_prints_progress(device, capfd):
    """``verbose=True`` prints the run's size and each iteration to stderr without any logging set up (harmonypy has
    its own handler), on both paths; quiet otherwise, and no handler is left behind."""
    x, meta = _data(n=300)
    run_harmony(x, meta, "Metadata_Plate", verbose=True, device=device)
    err = capfd.readouterr().err
    assert "Harmony: 300 cells x 12 dimensions, 10 clusters" in err and "Harmony iteration 1 of 10" in err
    assert ("PyTorch on cpu" in err) == (device == "cpu")
    run_harmony(x, meta, "Metadata_Plate", device=device)
    assert capfd.readouterr().err == ""
    assert logging.getLogger("phenovec.batch.harmony").handlers == []
    # logging set up above INFO by the caller: each line once (the records also reached the root's handler)
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("ROOT %(message)s"))
    root.addHandler(handler)
    try:
        run_harmony(x, meta, "Metadata_Plate", verbose=True, device=device)
    finally:
        root.removeHandler(handler)
    err = capfd.readouterr().err
    assert err.count("Harmony iteration 1 of 10") == 1 and "ROOT" not in err
    assert logging.getLogger("phenovec.batch.harmony").propagate


def test_parameters_that_would_run_silently_wrong_are_refused():
    x, meta = _data(n=300)
    for name in ("batch_prop_cutoff", "epsilon_harmony", "epsilon_cluster", "alpha", "block_size"):
        for bad in (None, float("nan"), "0.1"):
            with pytest.raises(ValueError, match=rf"{name} must be a finite number, got"):
                run_harmony(x, meta, "Metadata_Plate", **{name: bad})
    with pytest.raises(ValueError, match="block_size must be above 0"):
        run_harmony(x, meta, "Metadata_Plate", block_size=0)
    big = x.copy()
    big[5, 3] = 1e39
    with pytest.raises(ValueError, match=r"value 1e\+39 in row 5, column 3 is beyond float32's range"):
        run_harmony(big, meta, "Metadata_Plate")


def test_step_names_the_tables_row_label():
    from phenovec.batch import harmony as harmony_step

    x, meta = _data(n=300)
    df = pd.concat([meta, pd.DataFrame(x, columns=[f"Cells_f{j}" for j in range(x.shape[1])])], axis=1)
    df.index = [f"well{i}" for i in range(len(df))]
    df["Metadata_Plate"] = df["Metadata_Plate"].astype(object)
    df.loc["well7", "Metadata_Plate"] = None
    with pytest.raises(ValueError, match=r"'Metadata_Plate' is missing .* row 'well7'"):
        harmony_step(df)


@pytest.mark.parametrize("sigma,stage,what", [
    (1e-38, "assignment update", "objectives must be finite"),
    (1e-44, "initialization", "assignment normalizers must be finite and positive"),
])
def test_numerical_errors_stop_the_run_as_harmonypys(sigma, stage, what):
    """A sigma so small that the logits overflow stops harmonypy with an error, at the same stage: ours too,
    instead of returning a corrected embedding."""
    x, meta = _data()
    with pytest.raises(RuntimeError, match=f"during {stage}: {what}"):
        harmonypy.run_harmony(x, meta, ["Metadata_Plate"], sigma=sigma, verbose=False)
    with pytest.raises(FloatingPointError, match=f"during {stage}: {what}"):
        run_harmony(x, meta, ["Metadata_Plate"], sigma=sigma)


def test_kernels_compile_with_llvm_slp_and_leave_numba_setting_alone(monkeypatch):
    """The Harmony kernels' ``njit`` switches LLVM's SLP vectoriser on while they compile (Numba's default is off) and
    puts Numba's setting back afterwards; functions compiled elsewhere keep Numba's setting."""
    import numba
    from numba.core import codegen

    kern = load_kernel("harmony")
    seen = []
    real = codegen.create_pass_builder

    def spy(*args, **kwargs):
        seen.append(bool(kwargs.get("slp_vectorize")))
        return real(*args, **kwargs)

    monkeypatch.setattr(codegen, "create_pass_builder", spy)
    before = numba.config.SLP_VECTORIZE
    assert kern.njit()(lambda a: a + 1)(1) == 2  # a fresh function: compiled now, not loaded from a cache
    assert any(seen)
    assert numba.config.SLP_VECTORIZE == before
    if not before:
        seen.clear()
        assert numba.njit(lambda a: a + 2)(1) == 3
        assert seen and not any(seen)


def _host_has_fma() -> bool:
    """Whether this CPU has FMA (asked at run time, as glibc's ifunc does when it picks its expf build)."""
    import llvmlite.binding as llvm

    return bool(llvm.get_host_cpu_features().get("fma", False))


@pytest.mark.parametrize("k", [8, 13, 100])
def test_lane_layout_changes_move_every_item(k):
    """The lane kernels' layout changes (8 x 8 transposes, then item by item for the last k % 8 clusters): rows to
    lanes (stored, and added in the order ``lanes + rows``) and lanes back to rows give numpy's gather / scatter
    exactly, for k a multiple of 8, with a tail, and Harmony's default of 100; the transpose refuses a 2-D array."""
    from numba import njit
    from numba.core.errors import TypingError

    kern = load_kernel("harmony")
    lanes_from_rows, rows_from_lanes, transpose8 = kern._lanes_from_rows, kern._rows_from_lanes, kern._transpose8
    n_lanes = kern.LANES

    @njit
    def there_and_back(src, starts, lanes, added, jj, back):
        k = lanes.shape[0] // n_lanes
        kb = k - k % 8
        s_at = np.empty(8, np.int64)
        d_at = np.empty(8, np.int64)
        lanes_from_rows(src, starts, lanes, k, kb, s_at, d_at, False)
        lanes_from_rows(src, starts, added, k, kb, s_at, d_at, True)
        rows_from_lanes(lanes, jj, back, k, s_at, d_at)

    rng = np.random.default_rng(k)
    n = 40
    src = rng.standard_normal(n * k).astype(np.float32)
    cells = rng.choice(n, n_lanes, replace=False)
    starts = (cells * k).astype(np.int64)
    lanes = np.full(k * n_lanes, np.nan, np.float32)
    added = rng.standard_normal(k * n_lanes).astype(np.float32)
    before = added.copy()
    back = np.zeros(n * k, np.float32)
    there_and_back(src, starts, lanes, added, cells.astype(np.int64), back)
    expected = src.reshape(n, k)[cells].T.reshape(-1)  # cluster by cluster, the lanes side by side
    assert np.array_equal(lanes, expected)
    assert np.array_equal(added, before + expected)
    assert np.array_equal(back.reshape(n, k)[cells], src.reshape(n, k)[cells])
    assert not back.reshape(n, k)[np.setdiff1d(np.arange(n), cells)].any()  # no other row written

    @njit
    def on_a_matrix(m, at):
        transpose8(m, at, m, at)

    with pytest.raises(TypingError, match="src must be a 1-D C-contiguous float32 array"):
        on_a_matrix(np.zeros((8, 8), np.float32), np.zeros(8, np.int64))


def test_expf_is_libms_expf():
    """The vectorisable expf of the assignment kernels gives libm's expf bits (what Numba's math.exp and
    harmonypy's C++ call) on a sample of [-110, 0] and on inputs where a rounding detail shows (the FMA in the
    reduction: -63.09946, a 1-ulp case found by the exhaustive check over every float32 in [-110, 0])."""
    import math

    from numba import njit

    expf = load_kernel("harmony").expf

    @njit
    def both(x, ours, libm):
        for i in range(x.shape[0]):
            ours[i] = expf(x[i])
            libm[i] = np.float32(math.exp(x[i]))

    rng = np.random.default_rng(0)
    x = np.concatenate([
        -rng.random(2_000_000).astype(np.float32) * np.float32(110),
        -rng.random(200_000).astype(np.float32) * np.float32(1e-3),
        np.array([-63.09946060180664, 0.0, -0.0, -87.5, -103.2, -103.97, -104.0, -150.0, -np.inf], np.float32),
    ])
    ours, libm = np.empty_like(x), np.empty_like(x)
    both(x, ours, libm)
    bad = np.flatnonzero(ours.view(np.uint32) != libm.view(np.uint32))
    if not _host_has_fma():
        # glibc picks its FMA build of expf only on a CPU with FMA; elsewhere its plain build may differ from ours
        # (and from the FMA build) by 1 ulp on the rounding case, so only that case may disagree there
        bad = bad[x[bad] != np.float32(-63.09946060180664)]
    assert bad.size == 0, (x[bad[:5]], ours[bad[:5]], libm[bad[:5]])
    # the check can fail: there, exp in double rounded to float32 (a plausible stand-in) is 1 ulp off libm's expf
    known = np.flatnonzero(x == np.float32(-63.09946060180664))[0]
    assert ours[known] != np.float32(math.exp(float(x[known])))


def test_kmeans_screen_matches_the_sequential_rule():
    """The screen of the k-means steps: nearest = first minimum of |m|^2 - 2 x.m, unsure = runner-up within tol (an
    equal runner-up included), on ties too; and the screen of whole embeddings (each task's product computed where
    it is screened) gives numpy's nearest means, across task boundaries."""
    from numba import njit

    kern = load_kernel("harmony")
    screen = kern._screen_nearest

    @njit
    def screen_at(gt, j0, msq, tol, assignment, unsure):
        screen(gt, j0, msq, tol, assignment, unsure)

    rng = np.random.default_rng(3)
    for n, k in ((37, 5), (16, 1), (300, 23), (2500, 7)):
        gt = rng.normal(size=(k, n)).astype(np.float32)
        msq = rng.random(k)
        if k > 2:
            gt[2, ::3] = gt[0, ::3]  # exact ties between means 0 and 2 (same norm below)
            msq[2] = msq[0]
        assignment = np.full(n + 5, -1, np.int64)
        unsure = np.zeros(n + 5, np.bool_)
        screen_at(gt, np.int64(5), msq, 0.05, assignment, unsure)  # cell i of the tile is cell 5 + i
        assert (assignment[:5] == -1).all() and not unsure[:5].any()
        assignment, unsure = assignment[5:], unsure[5:]
        v = msq[:, None] - 2.0 * gt.astype(np.float64)
        for j in range(n):
            col = v[:, j]
            best = int(np.argmin(col))  # the first minimum
            runner = np.min(np.delete(col, best)) if k > 1 else np.inf
            assert assignment[j] == best, (n, k, j)
            assert unsure[j] == (runner - col[best] <= 0.05), (n, k, j)
        if k > 2:  # where the tied pair is nearest, the first of them wins and the cell is unsure
            tied = np.flatnonzero(np.isin(assignment[::3], (0, 2))) * 3
            assert len(tied) and (assignment[tied] == 0).all() and unsure[tied].all()
    n, k, d = 2500, 9, 6  # three tasks of 1024 cells, the last short
    x = rng.normal(size=(n, d)).astype(np.float32)
    means = rng.normal(size=(k, d)).astype(np.float32)
    msq = np.einsum("ij,ij->i", means, means, dtype=np.float64)
    assignment = np.empty(n, np.int64)
    unsure = np.empty(n, np.bool_)
    kern.nearest_candidates(x, means, msq, 1e-4, assignment, unsure)
    v = msq[:, None] - 2.0 * (means.astype(np.float64) @ x.T.astype(np.float64))
    order = np.sort(v, axis=0)
    clear = order[1] - order[0] > 1e-3  # away from a tie: BLAS's float32 rounding cannot decide these
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(assignment[clear], np.argmin(v, axis=0)[clear])
    assert not unsure[clear].any()


def test_ridge_sums_on_threads_are_the_same():
    """The ridge step's per-combination products run on Harmony's Numba threads, each combination on its own: the
    same bits on two threads as on one."""
    _needs_two_numba_threads()
    x, meta = _data()
    vars_use = ["Metadata_Plate", "Metadata_Source"]
    one = run_harmony(x, meta, vars_use, ncores=1)
    two = run_harmony(x, meta, vars_use, ncores=2)
    np.testing.assert_array_equal(one.Z_corr, two.Z_corr)
    assert one.objective_harmony == two.objective_harmony


@pytest.mark.parametrize("shape", [(0, 2), (1, 1), (500, 1), (3000, 3)])
def test_combination_order_is_the_stable_sort_of_the_batch_tuples(shape):
    """The cells' order by batch tuple (the ridge step's combinations) is numpy's stable sort of the tuples'
    mixed-radix keys, ties in cell order, with unused batch codes in between."""
    rng = np.random.default_rng(shape[0])
    spans = [7, 2, 40][:shape[1]]
    cell_batches = np.stack([rng.integers(0, s, shape[0]) * (1 + (c == 0)) for c, s in enumerate(spans)],
                            axis=1).astype(np.int64) if shape[0] else np.zeros(shape, np.int64)
    keys = np.zeros(shape[0], np.int64)
    for c in range(shape[1]):
        keys = keys * (int(cell_batches[:, c].max(initial=0)) + 1) + cell_batches[:, c]
    got = load_kernel("harmony").combination_order(cell_batches)
    np.testing.assert_array_equal(got, np.argsort(keys, kind="stable"))


def test_ridge_sums_equal_the_dense_products():
    """The ridge step's sums (per combination of batches, per batch, the intercept's over counted combinations, the
    co-occurrence of batches) equal the plain dense products they replace."""
    import importlib

    module = importlib.import_module("phenovec.batch.harmony")
    kern = load_kernel("harmony")
    rng = np.random.default_rng(5)
    n, d, k = 700, 6, 9
    cell_batches = np.stack([rng.integers(0, 4, n), 4 + rng.integers(0, 3, n), 7 + rng.integers(0, 2, n)], axis=1)
    cell_batches[:40, 1] = 4  # an uneven spread: some combinations have a few cells
    z = rng.normal(size=(n, d)).astype(np.float32)
    r = rng.random((n, k)).astype(np.float32)
    ridge = module._Ridge(z, cell_batches, kern.combination_order(cell_batches), np.array([4, 3, 2]), None,
                          np.float32(0.2), np.float32(1e-5))
    sums = ridge.combination_sums(r)
    z1 = np.hstack([z, np.ones((n, 1), np.float32)]).astype(np.float64)
    for g, (a, b) in enumerate(zip(ridge.starts, ridge.ends)):
        cells = ridge.order[a:b]
        assert (cell_batches[cells] == ridge.combos[g]).all()
        np.testing.assert_allclose(sums[g], r[cells].astype(np.float64).T @ z1[cells], rtol=1e-12, atol=1e-12)
    flat = sums.reshape(len(sums), -1)
    per_batch = np.empty((ridge.n_batches, k, d + 1))
    weighted = np.empty((k, d + 1))
    counted = rng.random((len(sums), k)) < 0.7
    kern.batch_sums(sums, ridge.combos, counted, per_batch, weighted)
    np.testing.assert_allclose(per_batch.reshape(ridge.n_batches, -1), ridge.h.T @ flat, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(weighted, np.where(counted[:, :, None], sums, 0).sum(axis=0), rtol=1e-12, atol=1e-12)
    totals = np.ascontiguousarray(sums[:, :, d])
    pairs = (ridge.h[:, :, None] * ridge.h[:, None, :]).reshape(len(sums), -1)
    np.testing.assert_allclose(kern.cooccurrence(totals, ridge.combos, ridge.n_batches),
                               (totals.T @ pairs).reshape(k, ridge.n_batches, ridge.n_batches), rtol=1e-12, atol=1e-12)


def test_fused_ridge_sums_equal_the_stored_ones(monkeypatch):
    """Where combinations hold a few cells the ridge sums skip the per-combination tensor: the batch, intercept and
    combination sums equal those from the stored tensor (to BLAS's rounding of a product on fewer columns), and a
    Harmony run on either path is harmonypy's, with the same bits on one thread as on two."""
    import importlib

    module = importlib.import_module("phenovec.batch.harmony")
    kern = load_kernel("harmony")
    rng = np.random.default_rng(3)
    n, d, k = 500, 7, 11
    cell_batches = np.stack([rng.integers(0, 5, n), 5 + rng.integers(0, 4, n), 9 + rng.integers(0, 3, n)], axis=1)
    z = rng.normal(size=(n, d)).astype(np.float32)
    r = rng.random((n, k)).astype(np.float32)
    ridge = module._Ridge(z, cell_batches, kern.combination_order(cell_batches), np.array([5, 4, 3]), None,
                          np.float32(0.2), np.float32(1e-5))
    counted = rng.random((len(ridge.starts), k)) < 0.8
    stored = ridge.batch_sums_of(ridge.combination_sums(r), counted)
    for tasks in (1, 2, 3, 20):
        fused = (np.empty_like(stored[0]), np.empty_like(stored[1]), np.empty_like(stored[2]))
        kern.fused_batch_sums(r, ridge.z_aug, ridge.order, ridge.starts, ridge.ends, ridge.combos, counted, tasks,
                              *fused)
        for a, b in zip(stored, fused):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12 * np.abs(a).max())
    x, meta = _data()
    vars_use = ["Metadata_Plate", "Metadata_Row", "Metadata_Source"]
    ref = harmonypy.run_harmony(x, meta, vars_use, verbose=False)
    for below in (0, 10**9):  # stored tensor / fused
        monkeypatch.setattr(module, "FUSED_BELOW_CELLS", below)
        ours = run_harmony(x, meta, vars_use)
        assert_matches(ours, ref)
    import numba

    if numba.config.NUMBA_NUM_THREADS >= 2:
        np.testing.assert_array_equal(run_harmony(x, meta, vars_use, ncores=1).Z_corr,
                                      run_harmony(x, meta, vars_use, ncores=2).Z_corr)


@pytest.mark.parametrize("several", [True, False])
def test_ridge_systems_equal_each_clusters_own_system(several):
    """The ridge kernel (harmonypy's elimination of the largest covariate's diagonal block, then Cholesky of the
    rest) gives each active cluster's intercept and kept batches' directions as its own system over the intercept
    and the kept batches, solved directly; a batch not kept gets nothing; a singular system is flagged, not solved;
    a kept batch with no weight and no penalty gives NaN directions (harmonypy's 0 / 0), not an exception."""
    kern = load_kernel("harmony")
    rng = np.random.default_rng(11)
    n_batches, k, d = 7, 6, 5
    # the sums of 60 weighted cells, each in one batch of each variable (batches 0-3, 4-6; one variable: 0-6)
    cells = 60
    h = np.zeros((cells, n_batches))
    if several:
        h[np.arange(cells), rng.integers(0, 4, cells)] = 1
        h[np.arange(cells), rng.integers(4, 7, cells)] = 1
        batch_cov = np.array([0, 0, 0, 0, 1, 1, 1])
    else:
        h[np.arange(cells), rng.integers(0, n_batches, cells)] = 1
        batch_cov = np.zeros(n_batches, np.int64)
    r = rng.random((cells, k))
    z = rng.normal(size=(cells, d)) * 3
    rz = np.concatenate([np.einsum("jb,jk,jc->bkc", h, r, z), (h.T @ r)[:, :, None]], axis=2)
    a00 = r.sum(axis=0)  # the intercept's sums (several variables; with one they come from the kept batches)
    rhs0 = r.T @ z
    cooc = np.einsum("jb,jk,jc->kbc", h, r, h) if several else np.empty((0, 0, 0))
    keep = rng.random((n_batches, k)) < 0.7
    keep[:, 4] = True  # every batch corrected: the intercept's penalty applies
    keep[:, 5] = [True, True, False, False, True, True, True]  # the second variable has the most kept batches
    pen = rng.random((n_batches, k)) + 0.5
    lamb0 = 0.25
    clusters = np.array([0, 1, 2, 4, 5])
    m = np.zeros((n_batches, k, d), np.float32)
    y = np.full((k, d), -7.0, np.float32)
    bad = np.full(len(clusters), -1)
    kern.ridge_systems(clusters, keep, batch_cov, rz, a00, rhs0, cooc, pen, lamb0, m, y, bad)
    assert (bad == 0).all()
    np.testing.assert_array_equal(y[3], np.float32(-7.0))  # not an active cluster: left alone
    for q in clusters:
        kb = np.flatnonzero(keep[:, q])
        size = 1 + len(kb)
        a = np.zeros((size, size))
        a[0, 0] = (a00[q] if several else rz[kb, q, d].sum()) + (lamb0 if keep[:, q].all() else 0.0)
        a[0, 1:] = a[1:, 0] = rz[kb, q, d]
        a[1:, 1:] = cooc[q][np.ix_(kb, kb)] if several else np.diag(rz[kb, q, d])
        a[1:, 1:] += np.diag(pen[kb, q])
        rhs = np.vstack([rhs0[q] if several else rz[kb, q, :d].sum(axis=0), rz[kb, q, :d]])
        w = np.linalg.solve(a, rhs)
        np.testing.assert_allclose(y[q], w[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(m[kb, q], w[1:], rtol=1e-5, atol=1e-5)
        assert not m[np.flatnonzero(~keep[:, q]), q].any()
    # cluster 1: every batch kept, no penalty: the intercept is the sum of a variable's batches, singular
    keep[:, 1] = True
    pen[:, 1] = 0.0
    # cluster 2: batch 0 kept with no weight and no penalty: 0 / 0 in its direction
    keep[:, 2] = True
    rz[0, 2] = 0.0
    pen[0, 2] = 0.0
    if several:
        cooc[2, 0, :] = cooc[2, :, 0] = 0.0
    m[:] = 0.0
    kern.ridge_systems(clusters, keep, batch_cov, rz, a00, rhs0, cooc, pen, 0.0, m, y, bad)
    assert bad.tolist() == [0, 1, 0, 0, 0]
    assert np.isnan(m[0, 2]).all() and np.isfinite(m[1:, 2]).all()


def test_blas_that_numba_calls_runs_on_one_thread_during_a_run():
    """Harmony runs BLAS on one thread; Numba's np.dot (the k-means screens, the ridge sums) calls SciPy's own OpenBLAS,
    which a fresh process loads only when a kernel first needs it. threadpoolctl limits only the libraries loaded
    when the limit is entered, so Harmony loads it first: in a fresh process, SciPy's BLAS loaded inside the run
    (as Numba loads it) still runs on one thread."""
    import json
    import os
    import subprocess
    import sys

    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPUs: with one, every BLAS runs on one thread anyway")
    code = (
        "import json\n"
        "from threadpoolctl import threadpool_info\n"
        "from phenovec.batch.harmony import _threads\n"
        "with _threads(0, 100000):\n"
        "    import scipy.linalg.cython_blas\n"
        "    blas = [i for i in threadpool_info() if i['user_api'] == 'blas']\n"
        "    print(json.dumps([(i['filepath'], i['num_threads']) for i in blas]))\n"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "", "OMP_NUM_THREADS": ""}
    env = {k: v for k, v in env.items() if v}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    libs = json.loads(out.strip().splitlines()[-1])
    assert any("scipy_openblas" in path and "64_" not in path for path, _ in libs), libs  # SciPy's own, not numpy's
    assert all(threads == 1 for _, threads in libs), libs
