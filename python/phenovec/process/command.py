"""``phenovec process ...``: the processing steps and recipes on the command line.

    phenovec process run RECIPE.yaml INPUT -o OUT.parquet
    phenovec process normalize INPUT -o OUT.parquet --method mad_robustize --samples "Metadata_x == 'DMSO'" --by Metadata_Plate
    phenovec process spherize INPUT -o OUT.parquet --method ZCA-cor --samples "..." --save-fit fit.npz
    phenovec process feature-select INPUT -o OUT.parquet --operation variance_threshold correlation_threshold
    phenovec process aggregate INPUT -o OUT.parquet --strata Metadata_Plate Metadata_Well --operation median
    phenovec process consensus INPUT -o OUT.parquet --replicate-columns Metadata_cpd --operation modz

Outputs are CSV, Parquet, AnnData .h5ad or .zarr by the file name (or ``--output-type``); Parquet carries the
step, its arguments and the input's SHA-256 in its metadata. Every subcommand prints a JSON summary.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _common(p: argparse.ArgumentParser, features: bool = True) -> None:
    p.add_argument("input", help="profiles: .csv[.gz], .parquet, a Parquet directory or a Zarr embedding store")
    p.add_argument("-o", "--output", required=True, help="output: .csv[.gz], .parquet, .h5ad or .zarr")
    p.add_argument("--output-type", choices=["csv", "parquet", "anndata_h5ad", "anndata_zarr"])
    if features:
        p.add_argument("--features", nargs="+", default=None,
                       help="feature columns (default: infer: CellProfiler prefixes, else numeric non-Metadata_)")
        p.add_argument("--meta-features", nargs="+", default=None, help="metadata columns (default: Metadata_*)")


def _feature_kwargs(a) -> dict:
    kw = {}
    if a.features:
        kw["features"] = a.features
    if getattr(a, "meta_features", None):
        kw["meta_features"] = a.meta_features
    return kw


def _by(v):
    return None if not v else (v[0] if len(v) == 1 else v)


def _run_step(a, step: str, kwargs: dict) -> dict:
    from phenovec.process.recipe import apply_recipe

    df = apply_recipe({"name": step, "steps": [{step: kwargs}]}, a.input, a.output, a.output_type, progress=False)
    return print_summary({"step": step, "arguments": kwargs, "rows": len(df), "columns": df.shape[1], "output": a.output})


def _fit_step(a, step: str, kwargs: dict) -> dict:
    """normalize / spherize, which can save their fit or apply a saved one."""
    from phenovec.io.profiles import read_table, write_profiles
    from phenovec.process.recipe import input_sha256

    if a.fit:
        kwargs = {**kwargs, "fit": a.fit}
    if getattr(a, "stream", False):
        if step != "normalize":
            raise ValueError("--stream is available for normalize")
        from phenovec.process.normalize import normalize_stream

        out = normalize_stream(a.input, a.output, return_fit=bool(a.save_fit), **kwargs)
        if a.save_fit:
            out[1].save(a.save_fit)
        return print_summary({"step": step, "arguments": kwargs, "output": a.output, "streamed": True,
                              "fit": a.save_fit})
    mod = __import__(f"phenovec.process.{step}", fromlist=[step])
    func = getattr(mod, step)
    df = read_table(a.input) if not Path(a.input).suffix == ".zarr" else _read_store(a.input)
    out = func(df, return_fit=bool(a.save_fit), **kwargs)
    if a.save_fit:
        out, fit = out
        fit.save(a.save_fit)
    meta = {"step": step, "arguments": {k: str(v) for k, v in kwargs.items()}, "input": a.input,
            "input_sha256": input_sha256(a.input)}
    write_profiles(out, a.output, output_type=a.output_type, metadata=meta)
    return print_summary({**meta, "rows": len(out), "columns": out.shape[1], "output": a.output, "fit": a.save_fit})


def _read_store(path):
    from phenovec.io.embeddings import EmbeddingStore

    return EmbeddingStore(path).read()


def add_process_parser(stages) -> None:
    pr = stages.add_parser("process", help="aggregate, normalize, feature-select, spherize, consensus; recipes")
    sub = pr.add_subparsers(dest="step", required=True)

    p = sub.add_parser("run", help="apply a YAML recipe (ordered steps) to an input")
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--output-type", choices=["csv", "parquet", "anndata_h5ad", "anndata_zarr"])
    p.set_defaults(run=_run_recipe)

    p = sub.add_parser("aggregate", help="cells to site/well profiles (streamed from files: bounded memory)")
    _common(p)
    p.add_argument("--strata", nargs="+", default=["Metadata_Plate", "Metadata_Well"])
    p.add_argument("--operation", choices=["median", "mean"], default="median")
    p.add_argument("--compute-object-count", action="store_true")
    p.set_defaults(run=lambda a: _run_step(a, "aggregate", {
        **({"features": a.features} if a.features else {}), "strata": a.strata, "operation": a.operation,
        "compute_object_count": a.compute_object_count}))

    p = sub.add_parser("normalize", help="standardize / robustize / mad_robustize / inverse_normal / spherize")
    _common(p)
    p.add_argument("--method", default="standardize",
                   choices=["standardize", "robustize", "mad_robustize", "inverse_normal", "spherize"])
    p.add_argument("--samples", default="all", help="rows to fit on: 'all' or a pandas query")
    p.add_argument("--by", nargs="+", help="fit per group of these columns (e.g. Metadata_Plate)")
    p.add_argument("--mad-robustize-epsilon", type=float, default=1e-18)
    p.add_argument("--fit", help="apply this saved fit (.npz) instead of fitting")
    p.add_argument("--save-fit", help="save the fitted statistics (.npz)")
    p.add_argument("--stream", action="store_true", help="two passes over the input, bounded memory (Parquet output)")
    p.set_defaults(run=lambda a: _fit_step(a, "normalize", {
        **_feature_kwargs(a), "method": a.method, "samples": a.samples, "by": _by(a.by),
        "mad_robustize_epsilon": a.mad_robustize_epsilon}))

    p = sub.add_parser("spherize", help="ZCA / PCA whitening (-cor variants) fitted on controls")
    _common(p)
    p.add_argument("--method", default="ZCA-cor", choices=["ZCA", "PCA", "ZCA-cor", "PCA-cor"])
    p.add_argument("--samples", default="all")
    p.add_argument("--epsilon", type=float, default=1e-6)
    p.add_argument("--no-center", action="store_true")
    p.add_argument("--by", nargs="+", help="fit per group (default: one global fit, as the DeepProfiler thesis)")
    p.add_argument("--fit", help="apply this saved fit (.npz)")
    p.add_argument("--save-fit", help="save the fitted transform (.npz)")
    p.set_defaults(run=lambda a: _fit_step(a, "spherize", {
        **_feature_kwargs(a), "method": a.method, "samples": a.samples, "epsilon": a.epsilon,
        "center": not a.no_center, "by": _by(a.by)}))

    p = sub.add_parser("feature-select", help="variance / frequency / correlation / NA / outlier / blocklist / noise")
    _common(p)
    p.add_argument("--operation", nargs="+", default=["variance_threshold"])
    p.add_argument("--samples", default="all")
    p.add_argument("--corr-threshold", type=float, default=0.9)
    p.add_argument("--corr-method", default="pearson", choices=["pearson", "spearman", "kendall"])
    p.add_argument("--na-cutoff", type=float, default=0.05)
    p.add_argument("--blocklist-file")
    p.add_argument("--outlier-cutoff", type=float, default=500)
    p.add_argument("--noise-removal-perturb-groups")
    p.add_argument("--noise-removal-stdev-cutoff", type=float)
    p.set_defaults(run=lambda a: _run_step(a, "feature_select", {
        **({"features": a.features} if a.features else {}), "operation": a.operation, "samples": a.samples,
        "corr_threshold": a.corr_threshold, "corr_method": a.corr_method, "na_cutoff": a.na_cutoff,
        "blocklist_file": a.blocklist_file, "outlier_cutoff": a.outlier_cutoff,
        "noise_removal_perturb_groups": a.noise_removal_perturb_groups,
        "noise_removal_stdev_cutoff": a.noise_removal_stdev_cutoff}))

    p = sub.add_parser("consensus", help="replicates to consensus profiles: median, mean or MODZ")
    _common(p)
    p.add_argument("--replicate-columns", nargs="+", default=["Metadata_Plate", "Metadata_Well"])
    p.add_argument("--operation", default="median", choices=["median", "mean", "modz"])
    p.set_defaults(run=lambda a: _run_step(a, "consensus", {
        **({"features": a.features} if a.features else {}), "replicate_columns": a.replicate_columns,
        "operation": a.operation}))


def _run_recipe(a) -> dict:
    from phenovec.process.recipe import apply_recipe

    df = apply_recipe(a.recipe, a.input, a.output, a.output_type)
    prov = df.attrs["phenovec"]
    print(json.dumps(prov, indent=2, default=str))
    return prov


def print_summary(summary: dict) -> dict:
    print(json.dumps(summary, indent=2, default=str))
    return summary
