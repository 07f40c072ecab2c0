"""The stages ``phenovec bench`` measures, each a rate (work / median seconds over the repeats).

- ``decode``: every channel image of the sites decoded by the Rust core (``_core.decode_image``), images/s
  (after one untimed pass, so files come from the page cache: the decoder, not the disk);
- ``crop``: decode + single-cell crops of every site (``_core.crop_site``, the crop stage's per-site call),
  cells/s;
- ``model[<provider> <precision>]``: the ONNX model on float32 crops (``runtime.ProfileSession``, batches of
  ``batch_size``) for each onnxruntime execution provider this machine lists and each precision it can run there
  (fp32 always; fp16 with TensorRT; bf16 with OpenVINO on AMX / AVX512-BF16 CPUs), crops/s; the variants it cannot
  run are listed with the reason;
- ``pipeline``: ``phenovec profile`` end to end (``profile.profile_sites``: decode, crop, model, Zarr + well
  Parquet), cells/s, a fresh output folder per repeat;
- ``eval_gemm_bound``: the N x N cosine similarity as one float32 GEMM (numpy/BLAS), the lower bound of any
  similarity-based metric, profiles/s; ``eval_map``: replicate retrieval average precision + mAP with p-values
  (``evaluate.average_precision`` + ``mean_average_precision(null_method="fast")``), profiles/s; the record gives
  ``map_over_bound`` = mAP seconds / GEMM seconds.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from phenovec.benchmark.measure import log, rate

PROVIDER_NAMES = {"TensorrtExecutionProvider": "tensorrt", "CUDAExecutionProvider": "cuda",
                  "OpenVINOExecutionProvider": "openvino", "CPUExecutionProvider": "cpu"}


@dataclass
class Sites:
    """Per site the channel paths and nucleus centres, in the model's channel order."""

    paths: list[list[str]]
    xs: list[np.ndarray]
    ys: list[np.ndarray]

    @property
    def cells(self) -> int:
        return int(sum(len(x) for x in self.xs))


def site_inputs(index, locations, channels: Sequence[str], limit: int | None) -> Sites:
    """The first ``limit`` sites of an image index with their cells (``ingest.index.site_centres``)."""
    from phenovec.ingest.index import site_centres
    from phenovec.profile.contract import match_channels

    pos = match_channels(channels, index.channels, f"image index {index.source}")
    centres = site_centres(index, locations)
    n = len(index) if limit is None else min(limit, len(index))
    out = Sites([], [], [])
    for s in range(n):
        x, y = centres.xy(s)
        local = index.site_paths(s)  # an object-store image is copied into the cache first
        out.paths.append([local[i] for i in pos])
        out.xs.append(np.ascontiguousarray(x, np.float64))
        out.ys.append(np.ascontiguousarray(y, np.float64))
    return out


def decode(sites: Sites, repeats: int) -> dict:
    from phenovec import _core

    files = [p for ps in sites.paths for p in ps]
    for f in files:  # the page cache, not the disk
        _core.decode_image(f)

    def work():
        for f in files:
            _core.decode_image(f)
        return len(files)

    return rate(work, repeats, "images/s", "decode")


def crop(sites: Sites, box: int, repeats: int) -> tuple[dict, np.ndarray]:
    """The crop rate and the kept crops of the last repeat (uint16 N x C x box x box)."""
    from phenovec import _core

    kept: list[np.ndarray] = []

    def work():
        kept.clear()
        for paths, xs, ys in zip(sites.paths, sites.xs, sites.ys):
            crops, _ = _core.crop_site(paths, xs, ys, int(box), "drop", False, compact=True)
            kept.append(np.asarray(crops))
        return sites.cells

    rec = rate(work, repeats, "cells/s", "crop")
    rec["crops_kept"] = int(sum(len(k) for k in kept))
    return rec, (np.concatenate(kept) if kept else np.empty((0,)))


def model_variants() -> tuple[list[tuple[list[str], str]], dict[str, str]]:
    """``[(providers, precision)]`` this machine can run and ``{variant name: why not}`` for the others."""
    from phenovec.runtime import providers as prov

    listed = [p for p in prov.available_providers(openvino=True) if p in prov.ORDER]
    runnable, skipped = [], {}
    for p in listed:
        chosen = [p] if p == prov.CPU else [p, prov.CPU]
        for precision in prov.PRECISIONS:
            why = prov.precision_unrunnable(precision, chosen)
            if p == prov.TENSORRT and not prov.tensorrt_importable():
                why = "the tensorrt package is not installed"
            if why is None:
                runnable.append((chosen, precision))
            else:
                skipped[variant_name(chosen, precision)] = why
    return runnable, skipped


def variant_name(providers: Sequence[str], precision: str) -> str:
    return f"model[{PROVIDER_NAMES.get(providers[0], providers[0])} {precision}]"


def model(onnx: str | Path, crops: np.ndarray, batch: int, repeats: int, providers: Sequence[str],
          precision: str) -> dict:
    """Crops/s of the model on ``crops`` (float32) with one session of ``providers`` / ``precision``; one untimed
    batch first (session warm-up, TensorRT engine build)."""
    from phenovec.runtime import ProfileSession

    sess = ProfileSession(onnx, providers=list(providers), precision=precision)
    sess.run(crops[:batch])

    def work():
        for j in range(0, len(crops), batch):
            sess.run(crops[j:j + batch])
        return len(crops)

    rec = rate(work, repeats, "crops/s", variant_name(providers, precision))
    rec.update(providers=list(sess.providers), precision=sess.precision, batch_size=batch)
    return rec


def pipeline(onnx: str | Path, index, locations, work_dir: Path, batch: int, repeats: int,
             workers: int | None = None) -> dict:
    """Cells/s of ``profile_sites`` (embedded cells / seconds), a fresh output folder per repeat."""
    from phenovec.profile import profile_sites

    runs = [0]

    def work():
        runs[0] += 1
        out = work_dir / f"profile-{runs[0]}"
        res = profile_sites(onnx, index, locations, out, batch_size=batch, workers=workers, progress=False)
        shutil.rmtree(out, ignore_errors=True)
        return res.cells

    rec = rate(work, repeats, "cells/s", "pipeline")
    rec["sites"] = len(index)
    return rec


def evaluation(meta, x: np.ndarray, sameby: str, repeats: int, null_size: int = 1000) -> dict[str, dict]:
    """The similarity GEMM bound and replicate-retrieval mAP with p-values on profiles ``x`` (rows of ``meta``),
    positives sharing ``sameby``."""
    import phenovec.evaluate as pe

    x = np.ascontiguousarray(x, np.float32)
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    xt = np.ascontiguousarray(xn.T)
    n = len(xn)
    step = n if n * n * 4 <= 2**30 else max(1, 2**28 // (n * 4))  # blocks of at most 256 MB past 1 GB

    def gemm():
        for s in range(0, n, step):
            block = xn[s:s + step] @ xt  # a separate contiguous transpose: sgemm, the full N x N flops
            del block
        return n

    def _map():
        ap = pe.average_precision(meta, x, distance="cosine", pos_sameby=[sameby], pos_diffby=[], neg_sameby=[],
                                  neg_diffby=[sameby])
        pe.mean_average_precision(ap, [sameby], null_size, 0.05, 0, progress_bar=False, null_method="fast")
        return n

    bound = rate(gemm, repeats, "profiles/s", "eval_gemm_bound")
    bound.update(n=n, dim=int(x.shape[1]), block_rows=step)
    mp = rate(_map, repeats, "profiles/s", "eval_map")
    mp.update(n=n, dim=int(x.shape[1]), sameby=sameby, null_size=null_size,
              map_over_bound=mp["median_s"] / bound["median_s"])
    log(f"evaluation: mAP {mp['median_s']:.3f} s = {mp['map_over_bound']:.1f} x the GEMM bound")
    return {"eval_gemm_bound": bound, "eval_map": mp}

