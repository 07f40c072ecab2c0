"""phenovec.runtime: ProfileSession on the CPU provider and on OpenVINO's CPU plugin (fp32 and bf16); the IO-binding
code runs on the CPU providers. TensorRT / CUDA choice is tested with a stubbed
``onnxruntime.get_available_providers``: no GPU provider has run here.

Reference: PyTorch eval-mode ``embed`` of the exported model on min-max scaled crops of the real CPJUMP1 site.
"""
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import calibrate_batchnorm, cpjump1_crops
from phenovec.export import export_onnx
from phenovec.runtime import ProfileSession, providers, select_providers, tensorrt_options
from phenovec.train.models import build_model

torch.set_num_threads(1)
CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
BOX = 64
INTENSITY = {"input_scaling": "minmax", "dtype_max": 65535.0}
TRT, CUDA, OV, CPU = providers.TENSORRT, providers.CUDA, providers.OPENVINO, providers.CPU


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """13 float32 crops (5 x 64 x 64) around real nuclei, per-crop per-channel min-max scaled with numpy."""
    x = cpjump1_crops(13, BOX).astype(np.float64)
    lo, hi = x.min(axis=(2, 3), keepdims=True), x.max(axis=(2, 3), keepdims=True)
    return np.where(hi > lo, (x - lo) / np.where(hi > lo, hi - lo, 1), 0).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, crops):
    """(model, path): a resnet_tiny with BatchNorm statistics from the real crops, exported with logits."""
    model = calibrate_batchnorm(build_model("resnet_tiny", 5, 3, seed=0), crops)
    path = tmp_path_factory.mktemp("rt") / "m.onnx"
    export_onnx(model, path, channels=CHANNELS, crop_size=BOX, intensity=INTENSITY, logits=True, opset=17,
                parity_crops=crops[:4])
    return model, path


def cpu_session(path, **kw):
    return ProfileSession(path, providers=[CPU], intra_op_threads=1, **kw)


def embed(model, x):
    with torch.no_grad():
        return model.embed(torch.from_numpy(x)).numpy()


def test_outputs_equal_pytorch(exported, crops):
    model, path = exported
    s = cpu_session(path)
    assert s.providers == [CPU] and not s.io_binding
    for batch in (crops[:1], crops[:7], crops):
        got = s.run(batch)
        assert got.dtype == np.float32 and got.shape == (len(batch), 128)
        np.testing.assert_allclose(got, embed(model, batch), atol=1e-4, rtol=0)
    f, lg = s.run_with_logits(crops[:5])
    with torch.no_grad():
        rl = model(torch.from_numpy(crops[:5])).numpy()
    np.testing.assert_allclose(f, embed(model, crops[:5]), atol=1e-4, rtol=0)
    np.testing.assert_allclose(lg, rl, atol=1e-4, rtol=0)
    assert s.run(crops[:0]).shape == (0, 128)


def test_metadata_and_check_input(exported):
    s = cpu_session(exported[1])
    assert s.channels == CHANNELS and s.crop_size == BOX and s.feature_dim == 128 and s.intensity == INTENSITY
    s.check_input(channels=CHANNELS, crop_size=BOX, intensity=dict(INTENSITY))  # matches: no error
    with pytest.raises(ValueError, match=r"channels \['ER', 'DNA'.*!= model's \['DNA', 'ER'"):
        s.check_input(channels=["ER", "DNA", "RNA", "AGP", "Mito"])  # same names, another order
    with pytest.raises(ValueError, match="crop_size 96 != model's 64"):
        s.check_input(channels=CHANNELS, crop_size=96)
    with pytest.raises(ValueError, match="intensity .*'none'.* != model's"):
        s.check_input(intensity={"input_scaling": "none", "dtype_max": 65535.0})
    with pytest.raises(ValueError, match="channels .*; crop_size 32"):  # every mismatch is named at once
        s.check_input(channels=CHANNELS[:4], crop_size=32)


def test_run_refuses_mismatched_crops(exported, crops):
    s = cpu_session(exported[1])
    with pytest.raises(ValueError, match="channel count 4 != model's 5"):
        s.run(crops[:, :4])
    with pytest.raises(ValueError, match="crop size 32 x 32 != model's 64 x 64"):
        s.run(np.ascontiguousarray(crops[:, :, :32, :32]))
    with pytest.raises(ValueError, match="dtype uint16 != float32"):
        s.run((crops * 65535).astype(np.uint16))
    with pytest.raises(ValueError, match="dtype float64"):
        s.run(crops.astype(np.float64))
    with pytest.raises(ValueError, match="N x C x H x W"):
        s.run(crops[0])


def test_run_batches(exported, crops, monkeypatch):
    import zarr

    s = cpu_session(exported[1])
    ref = s.run(crops)
    seen = []
    orig = s._run
    monkeypatch.setattr(s, "_run", lambda x, names: seen.append(len(x)) or orig(x, names))
    np.testing.assert_array_equal(s.run_batches(crops, 4), ref)
    assert seen == [4, 4, 4, 1]
    seen.clear()  # an iterable of uneven blocks (one per site) is regrouped into full batches
    blocks = [crops[0:3], crops[3:8], crops[8], crops[9:13]]
    np.testing.assert_allclose(s.run_batches(iter(blocks), 4), ref, atol=1e-6, rtol=0)
    assert seen == [4, 4, 4, 1]
    z = zarr.create_array(zarr.storage.MemoryStore(), data=crops, chunks=(5, 5, BOX, BOX))
    np.testing.assert_allclose(s.run_batches(z, 6), ref, atol=1e-6, rtol=0)
    seen.clear()  # blocks of per-site crops: batches inside one block are views of it (no copy), empty blocks pass
    got = []
    monkeypatch.setattr(s, "_run", lambda x, names: got.append(x) or orig(x, names))
    blocks = [crops[:0], crops[0:9], crops[9:9], crops[9:13]]
    np.testing.assert_allclose(s.run_batches(blocks, 4), ref, atol=1e-6, rtol=0)
    assert [len(x) for x in got] == [4, 4, 4, 1]
    assert [np.shares_memory(x, crops) for x in got] == [True, True, False, True]  # batch 3 spans two blocks
    assert s.run_batches([crops[:0]], 4).shape == (0, s.feature_dim)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        s.run_batches(crops, 0)
    with pytest.raises(ValueError, match="channel count"):
        s.run_batches(iter([crops[:2], crops[:2, :4]]), 8)


def test_provider_selection():
    all3 = [TRT, CUDA, "AzureExecutionProvider", CPU]
    assert select_providers("auto", all3, tensorrt_ok=True) == [TRT, CUDA, CPU]
    assert select_providers("auto", all3, tensorrt_ok=False) == [CUDA, CPU]  # no tensorrt package: skip TRT
    assert select_providers("auto", [CUDA, CPU], tensorrt_ok=True) == [CUDA, CPU]
    assert select_providers("auto", ["AzureExecutionProvider", CPU], tensorrt_ok=True) == [CPU]
    assert select_providers([CPU], all3, tensorrt_ok=False) == [CPU]
    with pytest.raises(ValueError, match="'CUDAExecutionProvider' is not available"):
        select_providers([CUDA, CPU], [CPU], tensorrt_ok=False)
    with pytest.raises(ValueError, match="'tensorrt' package does not import"):
        select_providers([TRT, CPU], all3, tensorrt_ok=False)
    with pytest.raises(ValueError, match="'auto' or a list"):
        select_providers("gpu", all3, tensorrt_ok=True)
    # OpenVINO: in "auto" only for bf16, and then after any GPU provider; combines only with CPU
    assert select_providers("auto", [OV, CPU], tensorrt_ok=False) == [CPU]
    assert select_providers("auto", [OV, CPU], tensorrt_ok=False, precision="bf16") == [OV, CPU]
    assert select_providers("auto", [CUDA, OV, CPU], tensorrt_ok=False, precision="bf16") == [CUDA, CPU]
    assert select_providers([OV, CPU], [OV, CPU], tensorrt_ok=False) == [OV, CPU]
    with pytest.raises(ValueError, match="combines only with 'CPUExecutionProvider'"):
        select_providers([CUDA, OV, CPU], [CUDA, OV, CPU], tensorrt_ok=False)
    with pytest.raises(ValueError, match="'OpenVINOExecutionProvider' is not available.*openvino extra"):
        select_providers([OV, CPU], [CPU], tensorrt_ok=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        select_providers("auto", [CPU], tensorrt_ok=False, precision="int8")


def test_tensorrt_options(tmp_path):
    o = tensorrt_options(fp16=True, cache_dir=tmp_path / "trt", input_name="crops", sample_shape=(5, 64, 64),
                         max_batch=512, opt_batch=256)
    assert o["trt_fp16_enable"] == "True" and o["trt_engine_cache_enable"] == "True"
    assert o["trt_engine_cache_path"] == str(tmp_path / "trt") and (tmp_path / "trt").is_dir()
    assert o["trt_profile_min_shapes"] == "crops:1x5x64x64" and o["trt_profile_max_shapes"] == "crops:512x5x64x64"
    o = tensorrt_options(fp16=False, cache_dir=None, input_name="crops", sample_shape=(5, 64, 64), max_batch=8,
                         opt_batch=8)
    assert o["trt_fp16_enable"] == "False" and "trt_engine_cache_enable" not in o


def test_auto_on_a_stubbed_gpu_build_falls_back_to_cpu(exported, crops, monkeypatch, tmp_path):
    """With TensorRT and CUDA listed (stub) the session asks for them; this CPU-only onnxruntime runs on CPU."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
    monkeypatch.setattr(providers, "tensorrt_importable", lambda: True)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s = ProfileSession(exported[1], precision="fp16", trt_cache_dir=tmp_path / "cache", intra_op_threads=1)
    assert s.requested_providers == [TRT, CUDA, CPU]
    assert s.providers == [CPU] and not s.io_binding
    assert s.precision == "fp32" and any("TensorrtExecutionProvider did not start" in str(x.message) for x in w)
    np.testing.assert_allclose(s.run(crops[:3]), embed(exported[0], crops[:3]), atol=1e-4, rtol=0)


def test_fp16_on_cpu_falls_back_with_a_warning(exported, crops):
    with pytest.warns(RuntimeWarning, match="fp16 needs the TensorRT provider"):
        s = cpu_session(exported[1], precision="fp16")
    assert s.precision == "fp32"
    np.testing.assert_allclose(s.run(crops[:3]), embed(exported[0], crops[:3]), atol=1e-4, rtol=0)


def test_refuses_a_model_without_phenovec_metadata(exported, tmp_path):
    proto = onnx.load(str(exported[1]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ValueError, match="not a phenovec ONNX export"):
        cpu_session(bare)
    proto = onnx.load(str(exported[1]))
    for p in proto.metadata_props:
        if p.key == "channels":
            p.value = '["DNA", "ER"'
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    with pytest.raises(ValueError, match="metadata key 'channels' is malformed"):
        cpu_session(broken)
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        cpu_session(tmp_path / "missing.onnx")


class _CountingSession:
    """Wraps an onnxruntime session: counts calls running at the same time (each held ~50 ms)."""

    def __init__(self, inner):
        import threading

        self.inner, self.now, self.most, self.lock = inner, 0, 0, threading.Lock()

    def run(self, names, feeds):
        import time

        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.05)
            return self.inner.run(names, feeds)
        finally:
            with self.lock:
                self.now -= 1


@pytest.mark.parametrize("exclusive", [True, False])
def test_exclusive_serialises_runs_of_threads(exported, crops, exclusive):
    from concurrent.futures import ThreadPoolExecutor

    model, path = exported
    s = cpu_session(path, exclusive=exclusive)
    s.session = counting = _CountingSession(s.session)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: s.run(crops[i:i + 3]), range(8)))
    for i, g in enumerate(got):  # each thread got its own crops' features
        np.testing.assert_allclose(g, embed(model, crops[i:i + 3]), atol=1e-4, rtol=0)
    if exclusive:
        assert counting.most == 1
    else:
        assert counting.most > 1


class _CallSizes:
    """Wraps an onnxruntime session: records the number of crops of each onnxruntime call."""

    def __init__(self, inner):
        self.inner, self.sizes = inner, []

    def run(self, names, feeds):
        self.sizes.append(len(feeds["crops"]))
        return self.inner.run(names, feeds)


def test_micro_batches_split_cpu_calls_and_change_no_number(exported, crops):
    from phenovec.runtime.session import CPU_CALL_ELEMENTS, auto_micro_batch

    model, path = exported
    whole = cpu_session(path, micro_batch=None)
    whole.session = w = _CallSizes(whole.session)
    ref_f, ref_l = whole.run_with_logits(crops)
    assert w.sizes == [13] and whole.micro_batch is None
    split = cpu_session(path, micro_batch=4)
    split.session = s = _CallSizes(split.session)
    f, lg = split.run_with_logits(crops)
    assert s.sizes == [4, 4, 4, 1]
    np.testing.assert_array_equal(f, ref_f)  # bit-identical: no crop's features depend on its call's other crops
    np.testing.assert_array_equal(lg, ref_l)
    np.testing.assert_array_equal(split.run(crops[:4]), ref_f[:4])
    assert s.sizes[-1] == 4 and split.run(crops[:0]).shape == (0, 128)
    np.testing.assert_allclose(f, embed(model, crops), atol=1e-4, rtol=0)
    # "auto" (default): CPU_CALL_ELEMENTS input values per call on the CPU provider, no split on a GPU provider
    auto = cpu_session(path)
    assert auto.micro_batch == CPU_CALL_ELEMENTS // (5 * BOX * BOX) == 64 and "micro_batch=64" in repr(auto)
    assert auto_micro_batch(CPU, (5, 128, 128)) == 16 and auto_micro_batch(CPU, (5, 1080, 1080)) == 1
    assert auto_micro_batch(CUDA, (5, 128, 128)) is None and auto_micro_batch(TRT, (5, 64, 64)) is None
    for bad in (0, -2, True, 2.5, "big"):
        with pytest.raises(ValueError, match="micro_batch must be 'auto', None or an integer >= 1"):
            cpu_session(path, micro_batch=bad)


def test_micro_batch_auto_follows_the_provider_that_started(exported, monkeypatch):
    """A stubbed GPU build that falls back to CPU splits as the CPU provider: the active provider decides."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    s = ProfileSession(exported[1], intra_op_threads=1)
    assert s.requested_providers == [CUDA, CPU] and s.providers == [CPU] and s.micro_batch == 64


def test_rebatch_views_and_copies():
    """rebatch: batches over blocks as if concatenated; only a batch spanning blocks is a copy."""
    from phenovec.runtime.session import rebatch

    rng = np.random.default_rng(5)
    blocks = [rng.random((n, 2, 3, 3), dtype=np.float32) for n in [0, 5, 3, 0, 9, 1, 2]]
    got = list(rebatch(blocks, 4))
    assert [len(b) for b in got] == [4, 4, 4, 4, 4]
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(blocks))
    # batches 0 (rows 0-3 of block 1), 2 and 3 (rows 0-7 of block 4) are views; 1 and 4 span blocks
    assert [any(np.shares_memory(b, blk) for blk in blocks) for b in got] == [True, False, True, True, False]
    assert [len(b) for b in rebatch(blocks, 100)] == [20]
    assert [len(b) for b in rebatch(blocks, 6)] == [6, 6, 6, 2]
    assert list(rebatch([blocks[0]], 4)) == [] and list(rebatch([], 4)) == []


def test_io_binding_path_on_the_cpu(exported, crops):
    """The binding code of the GPU providers (input bound from host memory, outputs bound and copied back) run on the
    CPU provider: the same features bit for bit as a plain run, with logits and micro-batches."""
    plain = cpu_session(exported[1])
    bound = cpu_session(exported[1], io_binding=True)
    assert bound.io_binding and not plain.io_binding and bound._output_device == "cpu"
    np.testing.assert_array_equal(bound.run(crops), plain.run(crops))
    for got, want in zip(bound.run_with_logits(crops[:5]), plain.run_with_logits(crops[:5])):
        np.testing.assert_array_equal(got, want)


def test_openvino_fp32_equals_pytorch_and_is_batch_independent(exported, crops):
    """OpenVINO's CPU plugin with float32 asked explicitly (its default on AMX CPUs is bf16): PyTorch's features to
    1e-4, and each crop's features independent of its call's other crops (micro-batches change no number)."""
    why = providers.openvino_unavailable()
    if why is not None:
        pytest.skip(f"needs OpenVINO's CPU device: {why}")
    model, path = exported
    s = ProfileSession(path, providers=[OV, CPU], intra_op_threads=1, micro_batch=4)
    assert s.providers[0] == OV and s.precision == "fp32" and s.micro_batch == 4
    got = s.run(crops)
    np.testing.assert_allclose(got, embed(model, crops), atol=1e-4, rtol=0)
    whole = ProfileSession(path, providers=[OV, CPU], intra_op_threads=1, micro_batch=None)
    np.testing.assert_array_equal(whole.run(crops), got)
    np.testing.assert_array_equal(s.run(crops[3:4]), got[3:4])
    assert ProfileSession(path, providers=[OV, CPU], intra_op_threads=1).micro_batch == 64  # host CPU: split


def test_bf16_on_openvino(exported, crops):
    """bf16 on a CPU with AMX / AVX512-BF16: close to float32 but not equal (it really ran in bf16); a repeated call
    gives the same bits (so a rerun of a fixed task does), another call size the same to float32 rounding (~1e-7,
    far inside bf16's error); on a CPU without bfloat16 (or without an OpenVINO device) a warning and float32."""
    model, path = exported
    ref = embed(model, crops)
    device = providers.openvino_device()
    if providers.device_supports_bf16(device):
        s = ProfileSession(path, precision="bf16", intra_op_threads=1, micro_batch=4)
        assert s.requested_providers == [OV, CPU] and s.providers[0] == OV and s.precision == "bf16"
        got = s.run(crops)
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert 1e-5 < err < 5e-2, err  # float32 would agree to ~1e-7 relative; bf16 keeps 8 mantissa bits
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > 0.999
        np.testing.assert_array_equal(s.run(crops), got)
        whole = ProfileSession(path, precision="bf16", intra_op_threads=1, micro_batch=None)
        np.testing.assert_allclose(whole.run(crops), got, atol=1e-6 * np.abs(ref).max(), rtol=0)
        assert "precision='bf16'" in repr(s)
    else:
        why = "bf16 needs a CPU with AMX or AVX512-BF16" if device is not None else "bf16 needs the OpenVINO provider"
        with pytest.warns(RuntimeWarning, match=why):
            s = ProfileSession(path, precision="bf16", intra_op_threads=1)
        assert s.precision == "fp32"
        np.testing.assert_allclose(s.run(crops), ref, atol=1e-4, rtol=0)


def test_no_openvino_device_is_an_answer_not_an_error(exported, crops, no_openvino_device):
    """A CPU where the installed OpenVINO plugin lists no device: the library is registered once per process (a
    second try raised onnxruntime's "already registered"), every question is answered (no device, no bf16, why),
    bf16 falls back with a warning naming why, and OpenVINO named explicitly is a clear error."""
    assert providers.openvino_device() is None and providers.openvino_device() is None
    assert no_openvino_device.calls == 1
    assert not providers.device_supports_bf16(None)
    assert "lists no CPU device on this CPU" in providers.openvino_unavailable()
    assert "lists no CPU device" in providers.precision_unrunnable("bf16")
    assert providers.precision_unrunnable("fp32") is None
    with pytest.warns(RuntimeWarning, match="bf16 needs the OpenVINO provider.*lists no CPU device"):
        s = ProfileSession(exported[1], precision="bf16", intra_op_threads=1)
    assert s.precision == "fp32" and s.providers == [CPU] and no_openvino_device.calls == 1
    np.testing.assert_allclose(s.run(crops[:3]), embed(exported[0], crops[:3]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="OpenVINOExecutionProvider' is not available"):
        ProfileSession(exported[1], providers=[OV, CPU])


def test_a_plugin_that_cannot_register_is_not_present(monkeypatch, no_openvino_device):
    """A registration that fails (a broken install, an onnxruntime without plugin EPs) is remembered, not retried,
    and reported as the reason."""
    def broken(name, path):
        no_openvino_device.calls += 1
        raise RuntimeError("cannot load library")

    monkeypatch.setattr(ort, "register_execution_provider_library", broken)
    assert providers.openvino_device() is None and providers.openvino_device() is None
    assert no_openvino_device.calls == 1
    assert "could not be registered with onnxruntime (RuntimeError: cannot load library)" in \
        providers.openvino_unavailable()


def test_bf16_without_openvino_falls_back_with_a_warning(exported, crops, monkeypatch):
    monkeypatch.setattr(providers, "openvino_installed", lambda: False)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    with pytest.warns(RuntimeWarning, match="bf16 needs the OpenVINO provider.*onnxruntime-ep-openvino"):
        s = ProfileSession(exported[1], precision="bf16", intra_op_threads=1)
    assert s.precision == "fp32" and s.providers == [CPU] and "bf16 needs the OpenVINO provider" in s.precision_fallback
    np.testing.assert_allclose(s.run(crops[:3]), embed(exported[0], crops[:3]), atol=1e-4, rtol=0)
    assert cpu_session(exported[1]).precision_fallback is None
    with pytest.raises(ValueError, match="precision must be one of"):
        ProfileSession(exported[1], precision="half")


def test_openvino_options_always_name_the_precision():
    import json

    for precision, hint in (("fp32", "f32"), ("bf16", "bf16")):
        cfg = json.loads(providers.openvino_options(precision=precision, threads=None)["load_config"])
        assert cfg == {"CPU": {"INFERENCE_PRECISION_HINT": hint, "ENABLE_CPU_PINNING": "NO"}}
    cfg = json.loads(providers.openvino_options(precision="fp32", threads=2)["load_config"])
    assert cfg["CPU"]["INFERENCE_NUM_THREADS"] == "2"
