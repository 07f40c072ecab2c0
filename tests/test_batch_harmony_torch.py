"""Harmony on a torch device (``run_harmony(device=...)``) against harmonypy 2.1.0 itself: the same algorithm, start
and cell orders, other float rounding. Runs on torch's CPU device here; the CUDA test asks for a GPU at run time."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import harmonypy  # the peer, pinned in requirements/ci.txt
from phenovec.batch.harmony import run_harmony
from test_batch_harmony import _data, assert_matches

logging.getLogger("harmonypy").setLevel(logging.WARNING)

CASES = [
    (["Metadata_Plate"], {}),
    (["Metadata_Plate", "Metadata_Row", "Metadata_Source"], {"nclust": 12, "theta": [2.0, 1.0, 1.0]}),
    (["Metadata_Plate", "Metadata_Row"], {"lamb": 1.0, "sigma": 0.2, "block_size": 0.1, "tau": 5}),
]


def _close_to_harmonypy(x, meta, vars_use, kw, device):
    ref = harmonypy.run_harmony(x, meta, vars_use, verbose=False, **kw)
    ours = run_harmony(x, meta, vars_use, device=device, **kw)
    assert_matches(ours, ref, z_rel=2e-6, rtol=2e-5, atol=2e-5)  # other rounding than harmonypy's C++
    return ours, ref


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one torch thread is faster on a shared machine (restored after the test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("vars_use,kw", CASES)
def test_torch_cpu_device_matches_harmonypy(vars_use, kw, one_torch_thread):
    x, meta = _data(n=600, seed=4)
    ours, ref = _close_to_harmonypy(x, meta, vars_use, kw, "cpu")
    # and it corrected something: the result is not the input
    assert np.abs(ours.Z_corr - x).max() > 0.1


def test_torch_zero_rows_start_as_harmonypy(one_torch_thread):
    """All-zero profiles (a blank well after centring) stay zero in the cosine-normalised start, as harmonypy's
    scale_to_unit_length leaves them: the torch path normalises on the host with the CPU path's kernel, so it picks
    harmonypy's initial centroids (torch's normalize, in other rounding, picked others: 2e-2 relative off)."""
    x, meta = _data(n=300, seed=5)
    x[:2] = 0.0
    ours, _ = _close_to_harmonypy(x, meta, ["Metadata_Plate"], {"nclust": 8}, "cpu")
    exact = run_harmony(x, meta, ["Metadata_Plate"], nclust=8)
    assert np.array_equal(ours.initial_centroids, exact.initial_centroids)


def test_torch_path_can_fail_a_wrong_answer():
    """The comparison above can fail: another seed's run (other centroids and orders) is not within tolerance."""
    x, meta = _data(n=600, seed=4)
    ref = harmonypy.run_harmony(x, meta, ["Metadata_Plate"], verbose=False)
    other = run_harmony(x, meta, ["Metadata_Plate"], device="cpu", random_state=7)
    assert np.abs(other.Z_corr - ref.Z_corr).max() > 2e-6 * np.abs(ref.Z_corr).max()


def _matmul_flags() -> tuple:
    """PyTorch's float32 matmul settings as a caller reads them (the legacy getter raises on a mix of the APIs)."""
    b = torch.backends
    try:
        legacy = torch.get_float32_matmul_precision()
    except RuntimeError:
        legacy = "mixed"
    return b.cuda.matmul.fp32_precision, b.mkldnn.matmul.fp32_precision, b.fp32_precision, legacy


def _reduced_legacy():
    torch.set_float32_matmul_precision("high")


def _reduced_allow_tf32():
    torch.backends.cuda.matmul.allow_tf32 = True


def _reduced_per_backend():
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"


@pytest.mark.skipif(not hasattr(torch.backends.mkldnn.matmul, "fp32_precision"), reason="PyTorch < 2.9")
@pytest.mark.parametrize("reduce", [_reduced_legacy, _reduced_allow_tf32, _reduced_per_backend])
def test_torch_path_ignores_reduced_precision_matmul_settings(reduce, one_torch_thread, monkeypatch):
    """A caller's TF32 / bf16 matmul settings (common in training scripts) do not reach the run: its matmuls run in
    IEEE float32 (read inside the run), the result is the default settings' bit for bit, and the caller's
    settings read back as they were afterwards, also after an error."""
    import phenovec.batch.harmony_torch as ht

    x, meta = _data(n=300, seed=5)
    default = run_harmony(x, meta, ["Metadata_Plate"], nclust=8, device="cpu")
    inside = []
    device_of = ht._device

    def spy(name):
        inside.append(_matmul_flags())
        return device_of(name)

    monkeypatch.setattr(ht, "_device", spy)
    before = _matmul_flags()
    try:
        reduce()
        caller = _matmul_flags()
        assert caller != before
        ours = run_harmony(x, meta, ["Metadata_Plate"], nclust=8, device="cpu")
        assert inside == [("ieee", "ieee", before[2], "highest")]
        assert _matmul_flags() == caller
        assert np.array_equal(ours.Z_corr, default.Z_corr)
        with pytest.raises(ValueError, match="sigma"):  # an error inside the run restores them too
            monkeypatch.setattr(ht, "_device", lambda name: (_ for _ in ()).throw(ValueError("sigma!")))
            run_harmony(x, meta, ["Metadata_Plate"], nclust=8, device="cpu")
        assert _matmul_flags() == caller
    finally:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.fp32_precision = "none"
        torch.backends.mkldnn.matmul.fp32_precision = "none"
    assert _matmul_flags() == before


def test_auto_and_missing_cuda():
    x, meta = _data(n=300, seed=5)
    auto = run_harmony(x, meta, ["Metadata_Plate"], nclust=8, device="auto")
    exact = run_harmony(x, meta, ["Metadata_Plate"], nclust=8)
    if torch.cuda.is_available():
        np.testing.assert_allclose(auto.Z_corr, exact.Z_corr, atol=1e-4)
    else:  # auto falls back to the exact CPU kernels: the same bits
        assert np.array_equal(auto.Z_corr, exact.Z_corr)
        for cuda in ("cuda", "CUDA:0", torch.device("cuda", 1)):  # a ValueError, which the CLI reports in one line
            with pytest.raises(ValueError, match="device='cuda(:0|:1)?': torch sees no CUDA GPU"):
                run_harmony(x, meta, ["Metadata_Plate"], nclust=8, device=cuda)


@pytest.mark.parametrize("device", ["gpu", "meta", "mps", "cuda:x", "", False, 0, torch.device("meta")])
def test_bad_device_is_a_value_error_before_any_work(device):
    """A device Harmony cannot run on is a ValueError naming ``device`` and the accepted values, raised before the
    input is looked at (here NaN data, refused otherwise); torch's own errors were RuntimeError ("gpu"),
    NotImplementedError ("meta") or TypeError (False), from the middle of the run."""
    x, meta = _data(n=300, seed=5)
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"device.*accepted: None, 'none', 'auto', 'cpu', 'cuda', 'cuda:N'"):
        run_harmony(x, meta, ["Metadata_Plate"], nclust=8, device=device)


def test_device_spellings(one_torch_thread):
    """"none" (the benchmark's and the CLI's word for None) is the exact path; names in any case and torch.device
    objects are the devices they name."""
    x, meta = _data(n=300, seed=5)
    exact = run_harmony(x, meta, ["Metadata_Plate"], nclust=8)
    for none in ("none", " None "):
        assert np.array_equal(run_harmony(x, meta, ["Metadata_Plate"], nclust=8, device=none).Z_corr, exact.Z_corr)
    cpu = run_harmony(x, meta, ["Metadata_Plate"], nclust=8, device="cpu")
    for same in ("CPU", torch.device("cpu")):
        assert np.array_equal(run_harmony(x, meta, ["Metadata_Plate"], nclust=8, device=same).Z_corr, cpu.Z_corr)


def test_cli_bad_device_is_one_error_line(tmp_path, capsys):
    """``phenovec process batch harmony ... --set device=gpu``: one ``phenovec: error:`` line naming the device,
    exit status 2, no output written (a RuntimeError traceback before)."""
    import pandas as pd

    from phenovec.cli import main

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(60, 5)), columns=[f"f{i}" for i in range(5)])
    df.insert(0, "Metadata_Plate", np.repeat(["p1", "p2", "p3"], 20))
    df.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.csv"
    rc = main(["process", "batch", "harmony", str(tmp_path / "in.csv"), "-o", str(out), "--set", "device=gpu",
               "--set", "nclust=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("phenovec: error:") and "device='gpu'" in err[0]
    assert not out.exists()


def test_cuda_device_matches_harmonypy():
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU (CUDA) visible to torch")
    x, meta = _data(n=2000, seed=6)
    _close_to_harmonypy(x, meta, ["Metadata_Plate", "Metadata_Row"], {}, "cuda")
