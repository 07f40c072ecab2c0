"""``phenovec bench``: measure this machine on your model and data (default: a synthetic plate and a random model).

    phenovec bench --out bench.json [--quick] [--model MODEL.onnx] [--index INDEX --locations NUCLEI]
        [--profiles WELLS --sameby COLUMN] [--stages decode crop model pipeline eval] [--repeats 3]
    phenovec bench --out b.json --compare a.json      (measure, then this machine beside a.json)
    phenovec bench --compare a.json b.json [--out cmp.json]   (two records side by side, nothing measured)

Each stage (``phenovec.benchmark.stages``: decode, crop, the model on every provider and precision this machine
can run, the whole ``profile`` pipeline, evaluation as the similarity GEMM bound vs mAP) is a rate, work / the
median seconds of ``--repeats`` runs. The record (``phenovec.benchmark.record``) is written to ``--out`` with a
PNG beside it (same name, ``.png``); a summary is printed. ``--quick`` (small plate, ``resnet_tiny``, 2 repeats)
takes well under a minute on 2 cores.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import shutil
import tempfile
from pathlib import Path

from phenovec.cli_options import add_out, add_quiet

STAGES = ("decode", "crop", "model", "pipeline", "eval")
#: (sites, field side, cells per site, crop box, architecture, repeats, eval profiles, eval dim, null size, batch)
PRESETS = {"quick": dict(sites=4, size=256, cells=(20, 30), box=64, arch="resnet_tiny", repeats=2, eval_n=1000,
                         eval_dim=64, null_size=200, batch_size=64, model_crops=256),
           "full": dict(sites=16, size=1080, cells=(150, 250), box=128, arch="efficientnet_b0", repeats=3,
                        eval_n=5000, eval_dim=1280, null_size=1000, batch_size=256, model_crops=2048)}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``bench`` to the CLI's top-level subparsers; the handler is ``args.run``."""
    p = subparsers.add_parser("bench", help="measure this machine: decode, crop, model per provider/precision, the "
                                            "profile pipeline and evaluation (rates, medians, JSON + PNG)")
    add_out(p, "record to write (.json; the plot beside it as .png); with --compare A B: the comparison",
            required=False)
    p.add_argument("--compare", nargs="+", metavar="RECORD",
                   help="one record: measure, then put this machine beside it; two: compare them, measure nothing")
    p.add_argument("--quick", action="store_true", help="small sizes (a check that runs in well under a minute)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to measure")
    p.add_argument("--model", help="ONNX model from 'phenovec export' (default: a randomly initialised --arch)")
    p.add_argument("--arch", help="architecture of the default model (default efficientnet_b0; --quick resnet_tiny)")
    p.add_argument("--index", help="your image index (index CSV, Gallery LoadData CSV or OME-Zarr plate); "
                                   "default: a synthetic plate")
    p.add_argument("--locations", help="nuclei table of --index")
    p.add_argument("--sites", type=int, help="sites to measure (the first N of --index, or of the synthetic plate)")
    p.add_argument("--size", type=int, help="synthetic field side in pixels (default 1080; --quick 256)")
    p.add_argument("--profiles", help="your well profiles for the evaluation stage (default: synthetic profiles)")
    p.add_argument("--sameby", help="with --profiles: the column replicates share (e.g. Metadata_Compound)")
    p.add_argument("--eval-n", type=int, help="synthetic profiles (default 5000; --quick 1000)")
    p.add_argument("--eval-dim", type=int, help="synthetic profile dimension (default 1280; --quick 64)")
    p.add_argument("--repeats", type=int, help="timed runs per stage (default 3; --quick 2); rates use the median")
    p.add_argument("--batch-size", type=int, help="crops per model call (default 256; --quick 64)")
    p.add_argument("--name", help="name of this machine in the record (default: host and CPU)")
    p.add_argument("--work", help="folder for the synthetic plate and model (default: a temporary folder, removed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic plate, model and profiles")
    add_quiet(p)
    p.set_defaults(run=run)
    return p


def _settings(a) -> dict:
    s = dict(PRESETS["quick" if a.quick else "full"])
    for k in ("sites", "size", "arch", "repeats", "batch_size", "eval_n", "eval_dim"):
        if getattr(a, k, None) is not None:
            s[k] = getattr(a, k)
    for k in ("sites", "size", "repeats", "batch_size", "eval_n", "eval_dim"):
        if s[k] < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be >= 1, got {s[k]}")
    return s


def _json_safe(o):
    if isinstance(o, dict):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "item") and not isinstance(o, (str, bytes)):
        return _json_safe(o.item())
    return o


def _write(record: dict, out: str | None, plot) -> dict:
    from phenovec.io.atomic import write_text_atomic

    paths = {}
    if out:
        path = Path(out)
        write_text_atomic(path, json.dumps(_json_safe(record), indent=2))
        paths = {"json": str(path), "png": str(plot(record, path.with_suffix(".png")))}
    return paths


def _inputs(a, s: dict, work: Path, channels):
    """(image index, locations) of the user's data or of a synthetic plate in ``work``."""
    from phenovec.ingest.index import read_image_index

    if a.index:
        if not a.locations:
            raise ValueError("--index needs --locations (its nuclei table)")
        return read_image_index(a.index, channels), a.locations
    from phenovec.ingest.synth import synth_plate

    spw = 2 if s["sites"] % 2 == 0 else 1
    plate = synth_plate(work / "plate", plates=1, wells=s["sites"] // spw, sites_per_well=spw, size=s["size"],
                        cells_per_site=s["cells"], channels=tuple(channels), seed=a.seed, progress=False)
    return read_image_index(plate["index"], channels), plate["nuclei"]


def _model(a, s: dict, work: Path):
    """(ONNX path, channels, crop size): the user's model or a randomly initialised ``arch`` exported to ``work``."""
    from phenovec.ingest.synth import CHANNELS

    if a.model:
        from phenovec.runtime.session import read_metadata

        meta = read_metadata(a.model)
        return a.model, list(meta.channels), int(meta.crop_size)
    from phenovec.export import export_onnx
    from phenovec.train.models import build_model

    path = work / f"{s['arch']}.onnx"
    export_onnx(build_model(s["arch"], len(CHANNELS), 7, seed=a.seed).eval(), path, channels=list(CHANNELS),
                crop_size=s["box"], intensity={"input_scaling": "minmax", "dtype_max": 65535.0}, parity=False)
    return str(path), list(CHANNELS), s["box"]


def _profiles(a, s: dict):
    if a.profiles:
        from phenovec.io.profiles import read_table, split_profiles

        if not a.sameby:
            raise ValueError("--profiles needs --sameby (the metadata column replicate wells share)")
        df = read_table(a.profiles)
        if a.sameby not in df.columns:
            raise KeyError(f"{a.profiles}: no column {a.sameby!r} (--sameby)")
        prof = split_profiles(df)
        return prof.meta, prof.feats, a.sameby
    from phenovec.benchmark.eval_data import COMPOUND, make_profiles

    meta, x, _ = make_profiles(s["eval_n"], s["eval_dim"], a.seed)
    return meta, x, COMPOUND


def measure(a, s: dict, work: Path) -> dict:
    """Run the chosen stages; the record."""
    import numpy as np

    import phenovec
    from phenovec.benchmark import stages as st
    from phenovec.benchmark.measure import log, machine_info
    from phenovec.benchmark.record import KIND, SCHEMA

    record = {"kind": KIND, "schema": SCHEMA, "name": a.name, "phenovec_version": phenovec.__version__,
              "started": _dt.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
              "config": {**s, "stages": list(a.stages), "model": a.model or f"random {s['arch']}",
                         "index": a.index or "synthetic", "profiles": a.profiles or "synthetic", "seed": a.seed},
              "stages": {}, "skipped": {}}
    image_stages = [x for x in a.stages if x != "eval"]
    if image_stages:
        if "model" in a.stages or "pipeline" in a.stages or a.model:
            onnx, channels, box = _model(a, s, work)
        else:  # decode / crop only: no model to build
            from phenovec.ingest.synth import CHANNELS

            onnx, channels, box = None, list(CHANNELS), s["box"]
        index, locations = _inputs(a, s, work, channels)
        sites = st.site_inputs(index, locations, channels, s["sites"])
        record["config"].update(box=box, channels=channels, sites=len(sites.paths), cells=sites.cells)
        log(f"bench: {len(sites.paths)} sites, {sites.cells} cells, box {box}, model {onnx or '-'}")
        crops = None
        if "decode" in a.stages:
            record["stages"]["decode"] = st.decode(sites, s["repeats"])
        if "crop" in a.stages or "model" in a.stages:
            rec, crops = st.crop(sites, box, s["repeats"] if "crop" in a.stages else 1)
            if "crop" in a.stages:
                record["stages"]["crop"] = rec
        if "model" in a.stages:
            if not len(crops):
                raise ValueError(f"no cell of the {len(sites.paths)} sites has a whole {box} x {box} crop inside its "
                                 "image: nothing to run the model on")
            reps = -(-s["model_crops"] // len(crops))
            x = np.concatenate([crops] * reps)[:s["model_crops"]].astype(np.float32) / np.float32(65535)
            runnable, skipped = st.model_variants()
            record["skipped"].update(skipped)
            for providers, precision in runnable:
                record["stages"][st.variant_name(providers, precision)] = st.model(
                    onnx, x, s["batch_size"], s["repeats"], providers, precision)
        if "pipeline" in a.stages:
            sub = index if s["sites"] >= len(index) else _first_sites(index, s["sites"])
            record["stages"]["pipeline"] = st.pipeline(onnx, sub, locations, work, s["batch_size"], s["repeats"])
    if "eval" in a.stages:
        meta, x, sameby = _profiles(a, s)
        record["stages"].update(st.evaluation(meta, x, sameby, s["repeats"], s["null_size"]))
    record["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    return record


def _first_sites(index, n: int):
    from dataclasses import replace

    return replace(index, sites=index.sites.iloc[:n].reset_index(drop=True), paths=index.paths[:n],
                   frames=None if index.frames is None else index.frames[:n],
                   labels=None if index.labels is None else index.labels[:n])


def run(a) -> dict:
    from phenovec.benchmark.plot import plot_compare, plot_record
    from phenovec.benchmark.record import compare, compare_table, read_record

    if a.compare and len(a.compare) > 2:
        raise ValueError(f"--compare takes one record (to compare this machine with) or two, got {len(a.compare)}")
    others = [read_record(p) for p in (a.compare or [])]  # checked before anything is measured
    if len(others) == 2:
        cmp = compare(*others)
        paths = _write(cmp, a.out, plot_compare)
        print(compare_table(cmp))
        return {"compare": cmp, **paths}
    s = _settings(a)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="phenovec-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        record = measure(a, s, work)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    summary = {"files": _write(record, a.out, plot_record),
               "rates": {k: f"{v['rate']:.4g} {v['unit']} (median of {v['repeats']})"
                         for k, v in record["stages"].items()},
               "skipped": record["skipped"]}
    if others:
        cmp = compare(others[0], record)
        if a.out:
            out = Path(a.out)
            summary["compare"] = _write(cmp, str(out.with_name(out.stem + "-compare.json")), plot_compare)
        print(compare_table(cmp))
    print(json.dumps(summary, indent=2))
    return {"record": record, **summary}
