"""bench/gpu_check.py (issue 31) runs on a CPU machine: --quick, in a subprocess, the CUDA kernels under the Numba
simulator; every check is present and PASSes or SKIPs naming the missing hardware, with sane numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"
CHECKS = ("auto", "harmony", "eval", "kernels", "train", "ort_cuda", "ort_tensorrt")  # the run order


def _run(out: Path, *args: str, sim: bool) -> tuple[subprocess.CompletedProcess, dict]:
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if sim:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), *args], env=env,
                          capture_output=True, text=True, timeout=400, cwd=REPO)
    doc = json.loads((out / "gpu_check.json").read_text())
    return proc, doc


def _cuda_visible() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


pytestmark = pytest.mark.skipif(_cuda_visible(), reason="a CPU-machine test: this machine has a CUDA GPU "
                                                        "(run bench/gpu_check.py itself, bench/GPU.md)")


def test_quick_run_on_the_cpu(tmp_path):
    proc, doc = _run(tmp_path, sim=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    checks = doc["checks"]
    assert list(checks) == list(CHECKS)
    lines = [ln for ln in proc.stdout.splitlines() if ln.split(" ", 1)[0] in ("PASS", "FAIL", "SKIP")]
    assert [ln.split(" ", 2)[1].rstrip(":") for ln in lines] == list(CHECKS)
    assert doc["summary"] == {"PASS": 5, "FAIL": 0, "SKIP": 2}, {k: (v["status"], v["reason"]) for k, v in checks.items()}
    assert doc["machine"]["numba_cudasim"] is True and doc["machine"]["cpus"] >= 1 and "torch" in doc["machine"]["versions"]
    assert (tmp_path / "gpu_check.log").exists()

    k = checks["kernels"]
    assert k["status"] == "PASS" and k["mode"] == "simulator"
    for dtype in ("float32", "float64"):
        p = k["parts"][dtype]
        assert p["status"] == "PASS" and p["cov_n_equal"]
        assert max(p["cov_mean_rel"], p["cov_m2_rel"], p["cov_m2_abs"], p["whiten_abs"]) <= 1e-10, p
        assert p["bound"]["status"] == "SKIP" and "simulator" in p["bound"]["reason"]
    assert k["parts"]["spherizer"]["transform_rel"] <= 1e-10

    t = checks["train"]
    assert t["status"] == "PASS" and t["device"] == "cpu"
    assert t["parts"]["fp16"]["status"] == "SKIP" and "no CUDA GPU" in t["parts"]["fp16"]["reason"]
    for mode in ("bf16", "fp32"):
        p = t["parts"][mode]
        assert p["status"] == "PASS" and p["finite"] and p["falling"], p
        assert p["loss_last"] < 0.8 * p["loss_first"] and p["images_per_s"] > 0
    loop = t["parts"]["train_loop"]
    assert loop["status"] in ("PASS", "SKIP"), loop
    if loop["status"] == "PASS":  # zarr is installed here: the real loop ran two epochs, no AMP on the CPU
        assert loop["epochs"] == 2 and len(loop["train_loss"]) == 2 and not loop["amp_grad_scaler_in_checkpoint"]

    for name, provider in (("ort_cuda", "CUDAExecutionProvider"), ("ort_tensorrt", "TensorrtExecutionProvider")):
        c = checks[name]
        assert c["status"] == "SKIP" and f"lists no {provider}" in c["reason"], c

    e = checks["eval"]
    assert e["status"] == "PASS" and e["device"] == "torch-cpu"
    assert e["parts"]["float64"]["max_abs_dap"] <= 1e-10 and e["parts"]["float32"]["max_abs_dap"] <= 0.05
    assert e["parts"]["float32"]["queries"] > 0
    assert e["parts"]["spearman"]["status"] == "PASS" and e["parts"]["spearman"]["bit_identical"]
    for precision in ("tf32", "bf16", "fp16"):
        assert 0 <= e["parts"]["reduced_precision"][precision]["max_abs_dap"] < 0.2

    h = checks["harmony"]
    assert h["status"] == "PASS" and h["device"] == "cpu" and h["finite"]
    assert h["max_rel_dz"] <= 1e-3 and h["iterations_device"] == h["iterations_exact"] >= 1

    a = checks["auto"]
    assert a["status"] == "PASS"
    assert a["picks"]["kernels"] == "cuda"  # the simulator counts as CUDA for kernel_loader (noted in the JSON)
    assert a["picks"]["trainer"] == "cpu" and a["picks"]["evaluate"] == "cpu"
    assert a["picks"]["harmony"].startswith("exact CPU kernels")
    assert a["picks"]["runtime_providers"][-1] == "CPUExecutionProvider"
    assert any("NUMBA_ENABLE_CUDASIM" in n for n in a["notes"])


def test_checks_are_independent_and_the_ort_stand_in(tmp_path):
    """--check picks checks; --device cuda without a GPU makes the kernels check FAIL with its exception and traceback,
    the next check still runs, and the exit status is 1; --ort-stand-in runs the onnxruntime check's code (export,
    parity, IO binding, the fp16 fallback, throughput) on the CPU provider; a hanging check is killed at its limit."""
    proc, doc = _run(tmp_path, "--check", "kernels", "--check", "ort_cuda", "--check", "ort_tensorrt", "--ort-stand-in",
                     "--device", "cuda", "--hang", "ort_tensorrt", sim=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    checks = doc["checks"]
    assert list(checks) == ["kernels", "ort_cuda", "ort_tensorrt"]
    assert doc["summary"] == {"PASS": 1, "FAIL": 2, "SKIP": 0}
    # a check that hangs (its grandchild holding the output pipe) is killed, group and all, at its limit
    hung = checks["ort_tensorrt"]
    assert hung["status"] == "FAIL" and hung["reason"] == "timed out after 6 s (the check's limit)"
    assert hung["process_wall_s"] < 30 and doc["machine"] is not None
    k = checks["kernels"]
    assert k["status"] == "FAIL" and "numba.cuda.is_available() is false" in k["reason"] and "Traceback" in k["traceback"]
    assert proc.stdout.splitlines()[0].startswith("FAIL kernels: RuntimeError")
    o = checks["ort_cuda"]
    assert o["status"] == "PASS" and o["stand_in"] and o["reason"].startswith("[stand-in")
    parts = o["parts"]
    assert parts["fp32_parity"]["rel"] <= 1e-6 and parts["fp32_parity"]["io_binding"] is True
    assert parts["device_io_binding"]["rel"] <= 1e-6
    assert parts["fp16"]["precision_running"] == "fp32" and "TensorRT" in parts["fp16"]["precision_fallback"]
    assert [r["batch"] for r in parts["throughput"]["fp32"]] == [8, 16]
    assert all(r["crops_per_s"] > 0 for r in parts["throughput"]["fp32"])


def test_kernels_skip_without_gpu_or_simulator():
    """Without a GPU and without NUMBA_ENABLE_CUDASIM the kernels check SKIPs naming both (asked in this process)."""
    from numba import config as nconfig

    if nconfig.ENABLE_CUDASIM:
        pytest.skip("this process runs under the Numba CUDA simulator")
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    ctx = gpu_check.Ctx(gpu_check.argparse.Namespace(quick=True, device="auto", work=".", ort_stand_in=False))
    with pytest.raises(gpu_check.Skip, match="no CUDA GPU .*NUMBA_ENABLE_CUDASIM is not set"):
        gpu_check._numba_mode(ctx)
    ctx.device = "cpu"
    with pytest.raises(gpu_check.Skip, match="--device cpu and NUMBA_ENABLE_CUDASIM is not set"):
        gpu_check._numba_mode(ctx)
