"""Runtime options through profiling: ``precision`` ("bf16" on OpenVINO's CPU plugin), ``providers`` and the
TensorRT cache folder reach the workers of ``profile_sites`` / ``profile_fields`` / ``phenovec profile``; a
worker that cannot run the run's precision is an error (never a silent float32 mix), and the precision is part of
the run's configuration (a resume with another precision is refused).
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from phenovec.profile import profile_sites, sites
from phenovec.runtime import providers, read_metadata
from test_profile import make_plate_and_model, read_outputs

OV, CPU = providers.OPENVINO, providers.CPU


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("precision")
    plate, onnx_path = make_plate_and_model(tmp)
    fp32 = tmp / "fp32"
    profile_sites(onnx_path, plate["index"], plate["nuclei"], fp32, batch_size=16, dtype="float32", workers=2,
                  progress=False)
    return tmp, plate, onnx_path, fp32


def bf16_here() -> bool:
    """Whether this machine's OpenVINO CPU device runs bfloat16 (asked when a test runs, never at collection)."""
    return providers.device_supports_bf16(providers.openvino_device())


def needs_openvino_device():
    why = providers.openvino_unavailable()
    if why is not None:
        pytest.skip(f"needs OpenVINO's CPU device: {why}")


def test_bf16_run_is_close_to_float32_and_recorded(setup):
    """bf16 (on a CPU with AMX / AVX512-BF16): every cell's embedding within bf16's error of the float32 run's but
    not equal to it, the same cells and wells; the run's manifest records the precision. On a CPU without
    bfloat16 the run is refused (no silent float32)."""
    tmp, plate, onnx_path, fp32 = setup
    out = tmp / "bf16"
    if not bf16_here():
        with pytest.raises(ValueError, match="precision 'bf16' cannot run on this machine: bf16 needs"):
            profile_sites(onnx_path, plate["index"], plate["nuclei"], out, batch_size=16, dtype="float32",
                          precision="bf16", progress=False)
        assert not out.exists()  # refused before any output
        return
    res = profile_sites(onnx_path, plate["index"], plate["nuclei"], out, batch_size=16, dtype="float32",
                        workers=2, precision="bf16", progress=False)
    m16, x16, c16, w16, _ = read_outputs(out)
    m32, x32, c32, w32, _ = read_outputs(fp32)
    assert res.embedded == len(x32) and x16.shape == x32.shape
    assert m16.equals(m32) and c16.equals(c32)
    err = np.abs(x16 - x32).max() / np.abs(x32).max()
    assert 1e-5 < err < 5e-2, err
    cos = (x16 * x32).sum(1) / np.linalg.norm(x16, axis=1) / np.linalg.norm(x32, axis=1)
    assert cos.min() > 0.999
    assert w16.filter(like="Metadata_").equals(w32.filter(like="Metadata_"))
    assert json.loads((out / "manifest.json").read_text())["config"]["precision"] == "bf16"
    # a rerun: resumes (nothing to do) with the same precision, refused with another
    again = profile_sites(onnx_path, plate["index"], plate["nuclei"], out, batch_size=16, dtype="float32",
                          workers=2, precision="bf16", progress=False)
    assert again.resumed_sites == again.sites
    with pytest.raises(ValueError, match="another configuration"):
        profile_sites(onnx_path, plate["index"], plate["nuclei"], out, batch_size=16, dtype="float32",
                      workers=2, progress=False)


def test_a_precision_this_machine_cannot_run_is_refused_before_any_output(setup, tmp_path):
    """fp16 needs TensorRT: on this CPU-only onnxruntime the run is refused before any output (local workers are
    this machine), and a worker elsewhere (a cluster's) refuses instead of running float32."""
    _, plate, onnx_path, _ = setup
    with pytest.raises(ValueError, match="precision 'fp16' cannot run on this machine: fp16 needs the TensorRT"):
        profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp_path / "o", batch_size=16,
                      precision="fp16", progress=False)
    assert not (tmp_path / "o").exists()
    ref = sites.ModelRef(str(onnx_path), read_metadata(onnx_path).weights_sha256, [CPU], 1, precision="fp16")
    with pytest.raises(RuntimeError, match="precision 'fp16' cannot run on worker .*fp16 needs the TensorRT"):
        sites.worker_session(ref)
    with pytest.raises(ValueError, match="precision must be one of"):
        profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp_path / "p", precision="int8",
                      progress=False)
    assert not (tmp_path / "p").exists()  # refused before any output


def test_bf16_without_an_openvino_device_is_a_clear_refusal(setup, tmp_path, no_openvino_device):
    """A CPU where OpenVINO's plugin lists no device (as on the AMD EPYC Zen 4 VM of issue 22): the plugin is
    registered once per process (a second registration was onnxruntime's "already registered" traceback inside a
    Dask worker); ``profile_sites`` and ``phenovec profile --precision bf16`` refuse before any output, naming why."""
    _, plate, onnx_path, _ = setup
    for name in ("a", "b"):  # twice in one process: still one registration, the same clear refusal
        with pytest.raises(ValueError, match="precision 'bf16' cannot run on this machine: .*lists no CPU device"):
            profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp_path / name, batch_size=16,
                          precision="bf16", progress=False)
        assert not (tmp_path / name).exists()
    assert no_openvino_device.calls == 1
    from phenovec.cli import main

    argv = ["profile", str(onnx_path), "--index", str(plate["index"]), "--locations", str(plate["nuclei"]),
            "-o", str(tmp_path / "cli"), "--precision", "bf16"]
    assert main(argv) == 2
    assert not (tmp_path / "cli").exists() and no_openvino_device.calls == 1


def test_openvino_sessions_per_thread_and_options_reach_them(setup, tmp_path):
    """OpenVINO on the CPU is a host provider: one session per Dask thread, as the CPU provider; the precision and
    TensorRT cache folder are carried to the worker's session."""
    needs_openvino_device()
    _, _, onnx_path, _ = setup
    sha = read_metadata(onnx_path).weights_sha256
    ref = sites.run_model_ref(str(onnx_path), sha, [OV, CPU], 1, True, precision="fp32",
                              trt_cache_dir=tmp_path / "trt")
    assert ref.per_thread and ref.intra_op_threads == 1 and ref.trt_cache_dir == str(tmp_path / "trt")
    s = sites.worker_session(ref)
    assert s.providers[0] == OV and s.precision == "fp32" and s.micro_batch is not None
    auto = sites.run_model_ref(str(onnx_path), sha, "auto", 1, True, precision="bf16")
    assert auto.per_thread and auto.precision == "bf16"


def test_cli_precision_and_providers(setup, tmp_path):
    """``phenovec profile --providers OpenVINOExecutionProvider CPUExecutionProvider --precision fp32`` equals the
    CPU provider's float32 run to float32 rounding; a bad --precision is refused by argparse."""
    needs_openvino_device()
    _, plate, onnx_path, fp32 = setup
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "phenovec.cli", "profile", str(onnx_path), "--index", str(plate["index"]),
           "--locations", str(plate["nuclei"]), "-o", str(out), "--batch-size", "16", "--dtype", "float32",
           "--providers", OV, CPU, "--precision", "fp32", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    _, x, _, _, _ = read_outputs(out)
    _, ref, _, _, _ = read_outputs(fp32)
    np.testing.assert_allclose(x, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
    assert json.loads((out / "manifest.json").read_text())["config"]["precision"] == "fp32"
    bad = subprocess.run(cmd[:-3] + ["--precision", "int8"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'int8'" in bad.stderr


def test_session_layouts(setup, tmp_path):
    """sessions="shared": one exclusive session per process with all its cores; "per_thread": a session per Dask
    thread; neither changes a float32 number. Refusals: an unknown layout, per_thread off the threads scheduler
    (before any output) or on a GPU provider (stubbed)."""
    _, plate, onnx_path, fp32 = setup
    sha = read_metadata(onnx_path).weights_sha256
    shared = sites.run_model_ref(str(onnx_path), sha, [CPU], 1, True, sessions="shared")
    assert not shared.per_thread and shared.intra_op_threads is None
    procs = sites.run_model_ref(str(onnx_path), sha, [CPU], 2, False, sessions="shared")
    assert not procs.per_thread and procs.intra_op_threads == 2
    assert sites.run_model_ref(str(onnx_path), sha, [CPU], 1, True, sessions="per_thread").per_thread
    with pytest.raises(ValueError, match="per_thread' needs the threads scheduler"):
        sites.run_model_ref(str(onnx_path), sha, [CPU], 1, False, sessions="per_thread")
    out = tmp_path / "shared"
    profile_sites(onnx_path, plate["index"], plate["nuclei"], out, batch_size=16, dtype="float32", workers=2,
                  sessions="shared", progress=False)
    np.testing.assert_array_equal(read_outputs(out)[1], read_outputs(fp32)[1])
    with pytest.raises(ValueError, match="sessions must be one of"):
        profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp_path / "x", sessions="many", progress=False)
    with pytest.raises(ValueError, match="per_thread' needs the threads scheduler"):
        profile_sites(onnx_path, plate["index"], plate["nuclei"], tmp_path / "y", sessions="per_thread",
                      scheduler="processes", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_per_thread_sessions_refused_on_a_gpu_provider(setup, monkeypatch):
    import onnxruntime as ort

    _, _, onnx_path, _ = setup
    sha = read_metadata(onnx_path).weights_sha256
    monkeypatch.setattr(ort, "get_available_providers", lambda: [providers.CUDA, CPU])
    with pytest.raises(ValueError, match="per_thread' is for host-CPU providers"):
        sites.run_model_ref(str(onnx_path), sha, "auto", 1, True, sessions="per_thread")
    assert not sites.run_model_ref(str(onnx_path), sha, "auto", 1, True).per_thread
