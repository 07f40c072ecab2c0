"""Export a table-trainer model to ONNX (with its standardisation inside the graph), checked against PyTorch.

What is exported per task (``encoders``): ``clip`` the CP encoder alone (what a user profiles new plates with; the
TX encoder and the projections are dropped), ``bae`` the shared latent (the CP encoder), ``simclr_profiles`` the
encoder (no projection head), ``fnn`` the per-task probabilities.

Graph: input ``profiles`` (N x D float32, N dynamic): the raw feature columns in the order of the metadata's
``feature_columns``; the training standardisation ``(x - mean) / scale`` is the graph's first operation; output
``features`` (N x embed_dim) or, for ``fnn``, ``probabilities`` (N x tasks). ``metadata_props`` (all strings, JSON
for lists and dicts): ``format`` = ``phenovec-table-onnx``, ``format_version``, ``task``, ``input``, ``output``,
``feature_columns``, ``standardization`` (``{"mean": [...], "scale": [...]}``, already applied in the graph),
``output_columns`` (``feature_<i>`` or the task names), ``feature_dim``, ``tasks``, ``keys``, ``compound``,
``model_config``, ``weights_sha256`` (``phenovec.export.onnx_export.weights_sha256``), ``phenovec_version``,
``torch_version``, ``opset``, ``exporter``. :func:`phenovec.train.tables.inference.embed_table` runs it on a table.

Exporters as ``phenovec.export.onnx_export``: opset >= 18 with the torch.export-based exporter, 17 with the
TorchScript one. The file is written to a temporary sibling, compared with PyTorch on onnxruntime's CPU provider
(``phenovec.export.parity``'s report and error; given raw profiles, else seeded profiles drawn from the training
mean and scale), and only then moved onto ``path``; a difference above ``atol`` leaves nothing there.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from phenovec.export.onnx_export import export_proto, resolve_exporter, weights_sha256
from phenovec.export.parity import ParityError, ParityReport

__all__ = ["FORMAT", "TableExportReport", "export_table_model", "table_model_from_checkpoint"]

FORMAT = "phenovec-table-onnx"
FORMAT_VERSION = 1


@dataclass
class TableExportReport:
    path: str
    task: str
    opset: int
    exporter: str
    output: str
    feature_dim: int
    n_features: int
    weights_sha256: str
    size_bytes: int
    seconds: float
    parity: ParityReport | None = None
    max_abs_diff: float | None = None
    parity_rows: str | None = None  # "given" or "random"
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["parity"] = self.parity.to_dict() if self.parity is not None else None
        return d


def table_model_from_checkpoint(path_or_ck):
    """(model in eval mode, checkpoint dict) of a table-trainer checkpoint."""
    from phenovec.train.checkpoint import CheckpointError, load_checkpoint
    from phenovec.train.tables.encoders import model_from_config

    ck = load_checkpoint(path_or_ck) if not isinstance(path_or_ck, dict) else path_or_ck
    if "cp_standardization" not in ck["data_config"]:
        raise CheckpointError(f"{path_or_ck if not isinstance(path_or_ck, dict) else 'checkpoint'}: not a table-"
                              "trainer checkpoint (no cp_standardization in its data_config)")
    model = model_from_config(ck["model_config"])
    model.load_state_dict(ck["model_state"])
    return model.eval(), ck


def _graph(model, mean: np.ndarray, scale: np.ndarray):
    import torch

    class Standardized(torch.nn.Module):
        """raw profiles -> (x - mean) / scale -> model.embed"""

        def __init__(self):
            super().__init__()
            self.m = model
            self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float32)))
            self.register_buffer("scale", torch.as_tensor(np.asarray(scale, dtype=np.float32)))

        def forward(self, x):
            return self.m.embed((x - self.mean) / self.scale)

    return Standardized().eval()


def check_table_parity(graph, onnx_path, profiles: np.ndarray, atol: float = 1e-4) -> ParityReport:
    """Max abs difference between onnxruntime (CPU) and PyTorch on ``profiles``; ``ParityError`` above ``atol``."""
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_outputs()[0].name
    got = sess.run([name], {"profiles": np.ascontiguousarray(profiles, dtype=np.float32)})[0].astype(np.float64)
    with torch.no_grad():
        ref = graph(torch.from_numpy(np.ascontiguousarray(profiles, dtype=np.float32))).numpy().astype(np.float64)
    if got.shape != ref.shape:
        raise ParityError(f"{onnx_path}: output {name!r} has shape {got.shape}, PyTorch gives {ref.shape}")
    diff = np.abs(got - ref)
    rep = ParityReport(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()),
                       per_output={name: float(diff.max())}, n_crops=int(len(profiles)), atol=float(atol),
                       reference_max_abs=float(np.abs(ref).max()), passed=bool(diff.max() <= atol))
    if not rep.passed:
        raise ParityError(f"{onnx_path}: ONNX vs PyTorch max abs difference {rep.max_abs_diff:.3g} > atol {atol:g} "
                          f"on {rep.n_crops} profiles")
    return rep


def export_table_model(checkpoint, path: str | os.PathLike, *, opset: int = 18, exporter: str = "auto",
                       parity: bool = True, parity_profiles: np.ndarray | None = None, n_random: int = 16,
                       atol: float = 1e-4, seed: int = 0) -> TableExportReport:
    """Export the model of a table-trainer checkpoint (path or dict) to ONNX at ``path`` (see the module docstring).
    ``parity_profiles``: raw profiles (N x D, the checkpoint's feature columns) to compare on."""
    import onnx
    import torch

    import phenovec

    t0 = time.perf_counter()
    opset, exporter = resolve_exporter(opset, exporter)
    model, ck = table_model_from_checkpoint(checkpoint)
    dc = ck["data_config"]
    mean = np.asarray(dc["cp_standardization"]["mean"], dtype=np.float32)
    scale = np.asarray(dc["cp_standardization"]["scale"], dtype=np.float32)
    columns = [str(c) for c in dc["cp_features"]]
    task = str(dc["task"])
    output = "probabilities" if task == "fnn" else "features"
    graph = _graph(model, mean, scale)
    kind = None
    if parity:
        if parity_profiles is None:
            rng = np.random.default_rng(seed)
            parity_profiles = (mean + scale * rng.normal(size=(n_random, len(columns)))).astype(np.float32)
            kind = "random"
        else:
            kind = "given"
            parity_profiles = np.asarray(parity_profiles, dtype=np.float32)
            if parity_profiles.ndim != 2 or parity_profiles.shape[1] != len(columns) or len(parity_profiles) == 0:
                raise ValueError(f"parity_profiles have shape {parity_profiles.shape}, expected N x {len(columns)} "
                                 "(the checkpoint's feature columns)")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        example = torch.from_numpy((mean + scale * np.random.default_rng(seed).normal(size=(2, len(columns))))
                                   .astype(np.float32))
        with torch.no_grad():
            feature_dim = int(graph(example).shape[1])
        proto = export_proto(graph, example, opset, exporter, [output], input_name="profiles")
        out_cols = list(dc["tasks"]) if task == "fnn" else [f"feature_{i}" for i in range(feature_dim)]
        props = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "task": task, "input": "profiles",
                 "output": output, "feature_columns": json.dumps(columns),
                 "standardization": json.dumps({"mean": mean.tolist(), "scale": scale.tolist(),
                                                "applied_in_graph": True}),
                 "output_columns": json.dumps(out_cols), "feature_dim": str(feature_dim),
                 "tasks": json.dumps(list(dc["tasks"])), "keys": json.dumps(list(dc["keys"])),
                 "compound": str(dc["compound"]), "model_config": json.dumps(model.config, sort_keys=True),
                 "weights_sha256": weights_sha256(model), "phenovec_version": str(phenovec.__version__),
                 "torch_version": str(torch.__version__), "opset": str(opset), "exporter": exporter}
        del proto.metadata_props[:]
        for k, v in props.items():
            proto.metadata_props.add(key=k, value=v)
        proto.producer_name, proto.producer_version = "phenovec", phenovec.__version__
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        rep = check_table_parity(graph, tmp, parity_profiles, atol) if parity else None
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return TableExportReport(str(path), task, opset, exporter, output, feature_dim, len(columns),
                             props["weights_sha256"], path.stat().st_size, time.perf_counter() - t0, rep,
                             rep.max_abs_diff if rep else None, kind, props)
