"""What a reduced-precision similarity GEMM does to average precision, on real profiles and on synthetic ones.

For each data set and question, ``evaluate_many`` runs once exactly (``precision="fp32"``, the Rust path) and
once per reduced precision: ``bf16`` natively where the CPU has AVX512-BF16 / AMX (oneDNN), else emulated, and
``fp16`` / ``tf32`` emulated (GEMM inputs rounded as the hardware rounds them, float32 sums: the values a GPU's
tensor cores give up to summation order). Reported per question and precision: queries with an AP, the
fraction whose AP changed at all and by more than 1e-3, max and mean |delta AP|, max |delta mAP| over the
groups, and how many groups' ``below_corrected_p`` (copairs' mAP test, fast null, 1000 draws, seed 0) flipped.
Cosine, ``ties="copairs"``; timings are single runs (see eval_bench.py for timings).

Data: nELISA (Kalinin et al.; 1,525 wells x 191 analytes: replicate vs negcon, replicate vs all), BBBC021 per-well
means (632 wells: replicate, MOA), the LINCS plate SQ00015054 (384 wells: replicate, MOA), read from
``../shared/data`` beside the repo; and eval_bench's synthetic profiles (``--synthetic-n``, D = 1,280, float32:
replicate vs DMSO, replicate vs all, MOA).

Example::

    python bench/eval_precision_bench.py --synthetic-n 10000 --out bench/out/eval_precision.json
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from measure import emit_document, log, machine_info

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REF = "Metadata_Reference_Index"


def rules(sameby, diffby=(), neg=None, rows=None):
    out = dict(pos_sameby=list(sameby), pos_diffby=list(diffby), neg_sameby=[], neg_diffby=list(neg or sameby))
    if rows is not None:
        out["rows"] = rows
    return out


def split(df):
    meta = df.filter(regex="^Metadata_").reset_index(drop=True)
    return meta, df.drop(columns=meta.columns).to_numpy(dtype=np.float64)


def nelisa():
    meta, x = split(pd.read_parquet(DATA / "kalinin-map-nelisa" / "nelisa_profiles.parquet"))
    meta["Metadata_broad_sample"] = meta["Metadata_broad_sample"].fillna("DMSO")
    neg = (meta["Metadata_control_type"] == "negcon").to_numpy()
    meta[REF] = np.where(neg, np.arange(len(meta)), -1)
    cpd = "Metadata_broad_sample"
    return meta, x, {"replicate_vs_negcon": rules([cpd, REF]), "replicate_vs_all": rules([cpd])}


def bbbc021():
    d = DATA / "bbbc021-cytominergallery"
    prof = pd.read_csv(d / "ljosa_jbiomolscreen_2013_per_well_mean.csv.gz")
    img = pd.read_csv(d / "BBBC021_v1_image.csv.gz")
    keys = {"Image_Metadata_Plate_DAPI": "Image_Metadata_Plate", "Image_Metadata_Well_DAPI": "Image_Metadata_Well"}
    wells = img[[*keys, "Image_Metadata_Compound", "Image_Metadata_Concentration"]].drop_duplicates().rename(columns=keys)
    df = prof.merge(wells, on=list(keys.values())).merge(
        pd.read_csv(d / "BBBC021_v1_moa.csv"), left_on=["Image_Metadata_Compound", "Image_Metadata_Concentration"],
        right_on=["compound", "concentration"])
    meta = df[["compound", "concentration", "moa"]].rename(columns=lambda c: "Metadata_" + c).reset_index(drop=True)
    x = df.drop(columns=[c for c in df.columns if c.startswith("Image_") or c in ("compound", "concentration", "moa")])
    keep = (meta["Metadata_moa"] != "DMSO").to_numpy()
    return meta, x.to_numpy(dtype=np.float64), {
        "replicate": rules(["Metadata_compound", "Metadata_concentration"]),
        "moa": rules(["Metadata_moa"], ["Metadata_compound"], rows=keep)}


def lincs():
    df = pd.read_csv(DATA / "cytominer-eval-lincs-plate" / "SQ00015054_normalized_feature_select.csv.gz")
    df = df.drop(columns=[c for c in df.columns if not c.startswith("Metadata_") and df[c].isna().any()])
    meta, x = split(df)
    meta["Metadata_moa"] = meta["Metadata_moa"].fillna("none")
    trt = (meta["Metadata_broad_sample"].fillna("DMSO") != "DMSO").to_numpy()
    meta["Metadata_broad_sample"] = meta["Metadata_broad_sample"].fillna("DMSO")
    return meta, x, {"replicate": rules(["Metadata_broad_sample"]),
                     "moa": rules(["Metadata_moa"], ["Metadata_broad_sample"], rows=trt & (meta["Metadata_moa"] != "none").to_numpy())}


def synthetic(n):
    from eval_bench import COMPOUND, MOA, make_profiles

    meta, x, _ = make_profiles(n, 1280, 0)
    dmso = (meta[COMPOUND] == "DMSO").to_numpy()
    meta[REF] = np.where(dmso, np.arange(n), -1)
    return meta, x, {"replicate_vs_dmso": rules([COMPOUND, REF]), "replicate_vs_all": rules([COMPOUND]),
                     "moa": rules([MOA], [COMPOUND], rows=~dmso)}


def group_cols(spec):
    return [c for c in spec["pos_sameby"] if c != REF]


def compare(exact: pd.DataFrame, red: pd.DataFrame, spec) -> dict:
    import phenovec.evaluate as pe

    a, b = exact["average_precision"].to_numpy(), red["average_precision"].to_numpy()
    ok = np.isfinite(a)
    if not np.array_equal(ok, np.isfinite(b)):
        raise AssertionError("reduced precision changed which rows have an AP")
    d = np.abs(a[ok] - b[ok])
    by = group_cols(spec)
    kw = dict(null_size=1000, threshold=0.05, seed=0, progress_bar=False, null_method="fast")
    ma, mb = pe.mean_average_precision(exact, by, **kw), pe.mean_average_precision(red, by, **kw)
    return {"queries": int(ok.sum()), "fraction_changed": float(np.mean(d > 0)),
            "fraction_changed_gt_1e-3": float(np.mean(d > 1e-3)), "max_abs_delta_ap": float(d.max()),
            "mean_abs_delta_ap": float(d.mean()), "groups": len(ma),
            "max_abs_delta_map": float(np.max(np.abs(ma["mean_average_precision"].to_numpy()
                                                     - mb["mean_average_precision"].to_numpy()))),
            "below_corrected_p_flips": int((ma["below_corrected_p"].to_numpy() != mb["below_corrected_p"].to_numpy()).sum()),
            "groups_below_corrected_p_exact": int(ma["below_corrected_p"].sum())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synthetic-n", type=int, nargs="*", default=[10000])
    ap.add_argument("--sets", nargs="+", default=["nelisa", "bbbc021", "lincs"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from phenovec.evaluate.evaluate_many import evaluate_many
    from phenovec.evaluate.precision import cpu_has_bf16

    native_bf16 = cpu_has_bf16()
    modes = [("bf16", not native_bf16), ("fp16", True), ("tf32", True)]
    doc = {"bench": "eval_precision", "machine": machine_info(), "args": vars(args), "cpu_bf16_native": native_bf16,
           "results": []}
    loaders = {"nelisa": nelisa, "bbbc021": bbbc021, "lincs": lincs}
    sets = [(name, loaders[name]) for name in args.sets] + [(f"synthetic_{n}", lambda n=n: synthetic(n))
                                                            for n in args.synthetic_n]
    for name, load in sets:
        meta, x, rule_sets = load()
        log(f"{name}: {x.shape[0]} x {x.shape[1]} {x.dtype}")
        t = time.perf_counter()
        exact = evaluate_many(meta, x, rule_sets)
        t_exact = time.perf_counter() - t
        for precision, emulate in modes:
            t = time.perf_counter()
            red = evaluate_many(meta, x, rule_sets, precision=precision, emulate=emulate)
            dt = time.perf_counter() - t
            for q, spec in rule_sets.items():
                row = {"data": name, "n": int(x.shape[0]), "dim": int(x.shape[1]), "question": q, "precision": precision,
                       "emulated": emulate, "seconds": dt, "seconds_fp32": t_exact, **compare(exact[q], red[q], spec)}
                log("  " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
                doc["results"].append(row)
    emit_document(doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
