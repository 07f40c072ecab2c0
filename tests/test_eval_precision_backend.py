"""Reduced-precision similarity GEMMs and the PyTorch backend of evaluate_many.

- the torch path (run on PyTorch's CPU device, "torch-cpu") gives the CPU path's AP: equal to 1e-12 on float64
  input for every metric, both tie modes, full and control-only blocks, and bit-identical for Spearman, whose
  similarities both paths compute exactly up to one shared scaling (so exactly tied pairs stay tied on any CPU);
  its ranking alone is bit-identical to the Numba kernel on the same similarity block;
- rounding to bf16 / fp16 / tf32 is the hardware's (round to nearest even), checked against torch and numpy;
- a precision that cannot run on the device is refused with a message naming it; fp32 stays the default;
- the CUDA test runs only where PyTorch sees a GPU (it skips naming the missing hardware).
"""
import numpy as np
import pytest
import torch

import phenovec.evaluate as pe
from phenovec import _core
from phenovec.evaluate.backend import Similarities, TorchRules, rank_block_torch, resolve_device
from phenovec.evaluate.evaluate_many import _build_rule, _counts, _rank_block, evaluate_many
from phenovec.evaluate.precision import cpu_has_bf16, round_to

from test_evaluate_many import ACT, synthetic as _synthetic


def synthetic(n_cpd=80, n_ctrl=60, d=24, seed=0, dtype=np.float64):
    return _synthetic(n_cpd=n_cpd, n_ctrl=n_ctrl, d=d, seed=seed, dtype=dtype)


def moa_rules(meta):
    return dict(pos_sameby=["Metadata_moa"], pos_diffby=["Metadata_cpd"], neg_sameby=[], neg_diffby=["Metadata_moa"],
                rows=(meta["Metadata_cpd"] != "DMSO").to_numpy())


def ap(frame):
    return frame["average_precision"].to_numpy()


@pytest.mark.parametrize("distance", ["cosine", "pearson", "spearman", "euclidean"])
@pytest.mark.parametrize("ties", ["copairs", "exact"])
def test_torch_path_equals_cpu_path(distance, ties):
    meta, x = synthetic(seed=1)
    rule_sets = {"act": ACT, "moa": moa_rules(meta)}
    cpu = evaluate_many(meta, x, rule_sets, distance=distance, ties=ties)
    for sets in (rule_sets, {"act": ACT}):  # full blocks (the MOA rules need every column), then control-only ones
        stats = {}
        # a small device budget: several blocks
        out = evaluate_many(meta, x, sets, distance=distance, ties=ties, device="torch-cpu", stats=stats,
                            device_block_bytes=40 * len(meta) * 48)
        assert stats["device"] == "torch-cpu"
        assert stats["full_blocks" if "moa" in sets else "reduced_blocks"] > 1
        for k in sets:
            a, b = ap(cpu[k]), ap(out[k])
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            if distance == "spearman":
                # Spearman similarities of 24 ranks take few values, so many pairs tie exactly in real arithmetic;
                # both paths compute them exactly (integer dots, then the same scaling), whatever the GEMM's
                # summation order on this CPU, so even ties="exact" orders every tie alike: the same bits
                np.testing.assert_array_equal(b, a, err_msg=k)
            else:
                np.testing.assert_allclose(b, a, rtol=0, atol=1e-12, err_msg=k)
            for c in ("n_pos_pairs", "n_total_pairs"):
                np.testing.assert_array_equal(out[k][c].to_numpy(), cpu[k][c].to_numpy())
            assert np.isfinite(a).sum() > 100


@pytest.mark.parametrize("ties", ["copairs", "exact"])
@pytest.mark.parametrize("euclidean", [False, True])
def test_torch_ranking_bit_identical_to_numba_on_one_block(ties, euclidean):
    meta, x = synthetic(seed=2, dtype=np.float32)
    rule = _build_rule(meta, "moa", moa_rules(meta))
    rule.m, rule.l = _counts(rule)
    q = np.arange(0, len(meta), 3, dtype=np.int64)  # DMSO queries (no positive) included: NaN on both sides
    block = _core.similarity_block(x, "euclidean" if euclidean else "cosine", q)
    want = np.ones(len(q), dtype=bool)
    f32 = ties == "copairs"
    ref, ref_u, found = np.empty(len(q)), np.empty(len(q)), np.zeros(len(q), dtype=np.int64)
    cols = np.arange(len(meta), dtype=np.int64)
    _rank_block(block, q, want, rule.m[q], rule.l[q] - rule.m[q], cols, cols, rule.active, rule.ps, rule.pd_, rule.ns, rule.nd,
                f32, euclidean, ref, ref_u, found, *rule.groups)
    np.testing.assert_array_equal(found, rule.m[q])
    got, got_u = rank_block_torch(torch.from_numpy(block), q, want, None, TorchRules(rule, "cpu"), f32, euclidean)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got_u, ref_u)
    assert np.isnan(ref).sum() > 0 and np.isfinite(ref).sum() > 50


def test_rounding_is_the_hardwares():
    z = np.random.default_rng(0).normal(size=(300, 40)).astype(np.float32) * np.float32(3.0)
    np.testing.assert_array_equal(round_to(z, "bf16"), torch.from_numpy(z).bfloat16().float().numpy())
    np.testing.assert_array_equal(round_to(z, "fp16"), z.astype(np.float16).astype(np.float32))
    t = round_to(z, "tf32")
    assert not (t.view(np.uint32) & np.uint32((1 << 13) - 1)).any()  # 10 significand bits kept
    rel = np.abs(t - z) / np.abs(z)
    assert rel.max() <= 2.0**-11 and rel.max() > 2.0**-14
    # ties to even: 1 + 2^-8 (exactly half a bf16 step above 1) rounds down to 1, 1 + 3 * 2^-8 up to 1 + 2^-6
    half = np.array([1 + 2.0**-8, 1 + 3 * 2.0**-8], dtype=np.float32)
    np.testing.assert_array_equal(round_to(half, "bf16"), [1.0, 1 + 2.0**-6])


def test_reduced_precision_changes_ap_by_what_it_rounds():
    meta, x = synthetic(seed=3, d=64)
    exact = evaluate_many(meta, x, {"act": ACT})["act"]
    ok = np.isfinite(ap(exact))
    for precision in ("bf16", "fp16", "tf32"):
        out = evaluate_many(meta, x, {"act": ACT}, precision=precision, emulate=True)["act"]
        d = np.abs(ap(out) - ap(exact))[ok]
        assert np.array_equal(np.isnan(ap(out)), ~ok)
        assert d.max() < 0.5 and np.mean(d > 0) < 0.5, precision
        # every rounded GEMM input differs from the exact one, so some rank must move on these 320 queries
        assert np.mean(d > 0) > 0, precision
    # fp16 and tf32 keep 11 significand bits, bf16 8: bf16 moves at least as many APs
    moved = {p: np.mean(ap(evaluate_many(meta, x, {"act": ACT}, precision=p, emulate=True)["act"])[ok] != ap(exact)[ok])
             for p in ("bf16", "fp16")}
    assert moved["bf16"] >= moved["fp16"]


def test_bf16_on_this_cpu_runs_or_is_refused_by_name():
    meta, x = synthetic(seed=4, d=64)
    if not cpu_has_bf16():
        # no bf16 unit, or one PyTorch does not use (AVX512-BF16 without AMX: the GEMM stays float32, silently)
        with pytest.raises(ValueError, match="precision='bf16' cannot run on this CPU: (it has neither AVX512-BF16 "
                                             "nor AMX|PyTorch runs its float32 GEMMs in float32 here)"):
            evaluate_many(meta, x, {"act": ACT}, precision="bf16")
        return
    native = evaluate_many(meta, x, {"act": ACT}, precision="bf16")["act"]
    emulated = evaluate_many(meta, x, {"act": ACT}, precision="bf16", emulate=True)["act"]
    # oneDNN's bf16 GEMM = bf16-rounded inputs, float32 sums: the emulation up to summation order
    assert np.nanmax(np.abs(ap(native) - ap(emulated))) < 0.05
    single = pe.average_precision(meta, x, precision="bf16", **ACT)
    assert list(single.columns) == list(native.columns)
    np.testing.assert_array_equal(ap(single), ap(native))


def test_precisions_that_cannot_run_are_refused():
    meta, x = synthetic(n_cpd=10, n_ctrl=5)
    for precision in ("fp16", "tf32"):
        with pytest.raises(ValueError, match=f"precision='{precision}' cannot run on the CPU"):
            evaluate_many(meta, x, {"act": ACT}, precision=precision)
        with pytest.raises(ValueError, match="cannot run on the CPU"):
            pe.average_precision(meta, x, precision=precision, **ACT)
    with pytest.raises(ValueError, match="precision must be one of"):
        evaluate_many(meta, x, {"act": ACT}, precision="int8")
    with pytest.raises(ValueError, match="device must be one of"):
        evaluate_many(meta, x, {"act": ACT}, device="tpu")
    with pytest.raises(ValueError, match="multilabel_col"):
        pe.average_precision(meta, x, multilabel_col="Metadata_cpd", precision="bf16", **ACT)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            evaluate_many(meta, x, {"act": ACT}, device="cuda")
        assert resolve_device("auto") == "cpu"


def test_torch_engine_on_the_cpu_equals_rust():
    meta, x = synthetic(seed=8)
    rule_sets = {"act": ACT, "moa": moa_rules(meta)}
    rust = evaluate_many(meta, x, rule_sets)
    torch_gemm = evaluate_many(meta, x, rule_sets, engine="torch")
    for k in rule_sets:
        np.testing.assert_allclose(ap(torch_gemm[k]), ap(rust[k]), rtol=0, atol=1e-12)
    single = pe.average_precision(meta, x, engine="torch", **ACT)
    np.testing.assert_allclose(ap(single), ap(rust["act"]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="engine must be one of"):
        evaluate_many(meta, x, rule_sets, engine="blas")
    with pytest.raises(ValueError, match="engine='rust' computes fp32 on the CPU only"):
        evaluate_many(meta, x, rule_sets, engine="rust", precision="bf16")


def test_similarity_blocks_of_the_torch_path_match_rust():
    _, x = synthetic(seed=5)
    q = np.array([0, 7, 100, 300], dtype=np.int64)
    cols = np.arange(0, len(x), 2, dtype=np.int64)
    for metric in ("cosine", "pearson", "spearman", "euclidean"):
        s = Similarities(x, metric, device="torch-cpu")
        full = s.block(q).numpy()
        # euclidean: -sqrt(|a|^2 + |b|^2 - 2 a.b) cancels near 0 (a row against itself), ~sqrt(ulp) absolute
        atol = 1e-6 if metric == "euclidean" else 1e-12
        core = _core.similarity_block(x, metric, q)
        np.testing.assert_allclose(full, core, rtol=0, atol=atol, err_msg=metric)
        # a block on some columns: the same values up to the GEMM's summation order, which on some CPUs (AVX2 MKL)
        # depends on the number of columns (an ulp or two)
        np.testing.assert_allclose(s.block(q, cols).numpy(), full[:, cols], rtol=0, atol=1e-15, err_msg=metric)
        if metric == "spearman":  # exact dots, one shared scaling: the core's bits in any block shape
            np.testing.assert_array_equal(full, core)
            np.testing.assert_array_equal(s.block(q, cols).numpy(), full[:, cols])
    # float32 rows: 24 features keep every partial sum of the integer dots below 2^24, so exact there too
    x32 = x.astype(np.float32)
    s32 = Similarities(x32, "spearman", device="torch-cpu").block(q).numpy()
    assert s32.dtype == np.float32
    np.testing.assert_array_equal(s32, _core.similarity_block(x32, "spearman", q))


def test_spearman_rows_are_the_cores_integers_and_refuse_a_constant_row():
    z, inv = _core.spearman_rows(np.array([[6.0, 6.0, 1.0, 1.0, 3.5, 3.5], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]))
    np.testing.assert_array_equal(z, [[4, 4, -4, -4, 0, 0], [-5, -3, -1, 1, 3, 5]])  # 2 r - (D + 1), ties averaged
    np.testing.assert_array_equal(inv, [1 / 8, 1 / np.sqrt(70.0)])
    z32, inv32 = _core.spearman_rows(np.array([[3.0, 1.0, 2.0]], dtype=np.float32))
    assert z32.dtype == inv32.dtype == np.float32 and z32.tolist() == [[2.0, -2.0, 0.0]]
    with pytest.raises(ValueError, match="row 1 .*spearman"):
        _core.spearman_rows(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))


def test_cuda_backend_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU visible to PyTorch (torch.cuda.is_available() is False on this machine)")
    meta, x = synthetic(seed=6, dtype=np.float32)
    rule_sets = {"act": ACT, "moa": moa_rules(meta)}
    cpu = evaluate_many(meta, x, rule_sets)
    x64 = x.astype(np.float64)
    cpu64 = evaluate_many(meta, x64, rule_sets)
    stats = {}
    gpu64 = evaluate_many(meta, x64, rule_sets, device="cuda", stats=stats)
    assert stats["device"].startswith("cuda")
    gpu = evaluate_many(meta, x, rule_sets, device="auto")
    for k in rule_sets:
        np.testing.assert_allclose(ap(gpu64[k]), ap(cpu64[k]), rtol=0, atol=1e-12)
        assert np.nanmax(np.abs(ap(gpu[k]) - ap(cpu[k]))) < 0.05
        for precision in ("tf32", "bf16", "fp16"):
            red = evaluate_many(meta, x, rule_sets, device="cuda", precision=precision)[k]
            emu = evaluate_many(meta, x, rule_sets, device="cpu", precision=precision, emulate=True)[k]
            assert np.nanmax(np.abs(ap(red) - ap(emu))) < 0.1, precision
