"""``phenovec process ...``: the processing steps and recipes on the command line.

    phenovec process recipes                                   (the packaged recipes, one line each)
    phenovec process show lincs-cellprofiler                   (a recipe's YAML)
    phenovec process run lincs-cellprofiler cells.parquet -o profiles.parquet --platemap platemap.txt \\
        --set normalize.samples="Metadata_broad_sample == 'DMSO'"
    phenovec process collate ANALYSIS_FOLDER -o cells.parquet  (CellProfiler Image + compartment tables)
    phenovec process aggregate INPUT -o OUT.parquet --strata Metadata_Plate Metadata_Well --operation median
    phenovec process annotate INPUT --platemap platemap.txt -o OUT.parquet --join-on Metadata_well_position Metadata_Well
    phenovec process normalize INPUT -o OUT.parquet --method mad_robustize --samples "Metadata_x == 'DMSO'" --by Metadata_Plate
    phenovec process spherize INPUT -o OUT.parquet --method ZCA-cor --samples "..." --save-fit fit.npz
    phenovec process feature-select INPUT -o OUT.parquet --operation variance_threshold correlation_threshold
    phenovec process consensus INPUT -o OUT.parquet --replicate-columns Metadata_cpd --operation modz
    phenovec process batch harmony INPUT -o OUT.parquet --set "vars_use=[Metadata_Plate]" --set n_components=50 \\
        --save-fit harmony.npz                                  (then: batch harmony NEW -o NEW_OUT --fit harmony.npz)

Inputs: anything :func:`phenovec.io.profiles.read_table` reads (CSV, Parquet, AnnData .h5ad / .zarr, phenovec's
embeddings.zarr, DeepProfiler .npz). Outputs are CSV, Parquet, AnnData .h5ad or .zarr by the file name (or
``--output-type``); Parquet / AnnData carry the step, its arguments and the input's SHA-256 in their metadata.
Every subcommand prints a JSON summary (``--quiet``: no progress bars).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from phenovec.cli_options import add_out, add_quiet, option, show_progress

OUTPUT_TYPES = ["csv", "parquet", "anndata_h5ad", "anndata_zarr"]
INPUT_HELP = ("profiles: .csv[.gz], .parquet (file or folder), AnnData .h5ad / .zarr, a phenovec embeddings.zarr or "
              "DeepProfiler .npz (file or folder)")
SAMPLES_HELP = "rows to fit on: 'all' or a filter expression such as \"Metadata_treatment == 'DMSO'\""


def _output(p: argparse.ArgumentParser) -> None:
    add_out(p, "output: .csv[.gz], .parquet, .h5ad or .zarr (type by the name unless --output-type)",
            old=("--output",))
    option(p, "--output-type", choices=OUTPUT_TYPES, default=None,
           help="output type (default: from the output's file name)")
    add_quiet(p)


def _common(p: argparse.ArgumentParser, meta_features: bool = False) -> None:
    p.add_argument("input", nargs="+", help=INPUT_HELP + "; several inputs (e.g. the shards of a sharded profile "
                                                      "run) are read one after another as one table")
    _output(p)
    option(p, "--features", nargs="+", default=None,
           help="feature columns (default: the input's declared features, else CellProfiler prefixes, "
                "else every numeric non-Metadata_ column)")
    if meta_features:
        option(p, "--meta-features", nargs="+", default=None, help="metadata columns (default: every Metadata_ column)")


def _feature_kwargs(a) -> dict:
    kw = {}
    if a.features:
        kw["features"] = a.features
    if getattr(a, "meta_features", None):
        kw["meta_features"] = a.meta_features
    return kw


def _by(v):
    return None if not v else (v[0] if len(v) == 1 else v)


def _one_or_many(a) -> None:
    """``a.input``: one path, or the list of several (read one after another, streamed where the step streams)."""
    a.input = a.input[0] if len(a.input) == 1 else a.input


def _run_step(a, step: str, kwargs: dict) -> dict:
    from phenovec.process.recipe import apply_recipe

    _one_or_many(a)
    df = apply_recipe({"name": step, "steps": [{step: kwargs}]}, a.input, a.out, a.output_type,
                      progress=show_progress(a))
    return print_summary({"step": step, "arguments": kwargs, "rows": len(df), "columns": df.shape[1], "output": a.out})


def _fit_step(a, step: str, kwargs: dict, func=None) -> dict:
    """normalize / spherize / a batch correction (``func``), which can save their fit or apply a saved one."""
    from phenovec.io.profiles import read_table, write_profiles
    from phenovec.process.recipe import input_sha256

    _one_or_many(a)
    if a.fit:
        kwargs = {**kwargs, "fit": a.fit}
    if getattr(a, "stream", False):
        if step != "normalize":
            raise ValueError("--stream is available for normalize")
        from phenovec.process.normalize import normalize_stream

        out = normalize_stream(a.input, a.out, return_fit=bool(a.save_fit), **kwargs)
        if a.save_fit:
            out[1].save(a.save_fit)
        return print_summary({"step": step, "arguments": kwargs, "output": a.out, "streamed": True,
                              "fit": a.save_fit})
    if func is None:
        func = getattr(__import__(f"phenovec.process.{step}", fromlist=[step]), step)
    inputs = a.input if isinstance(a.input, list) else [a.input]
    if a.save_fit:  # checked before anything is read or written: a fit saved over its input or output loses one
        fit_path = Path(a.save_fit).resolve()
        for other, what in [(x, "an input") for x in inputs] + [(a.out, "the output (-o)")]:
            if Path(other).resolve() == fit_path:
                raise ValueError(f"--save-fit {a.save_fit}: that is {what}; save the fit under another name")
    if a.output_type is None:
        from phenovec.io.profiles import infer_output_type

        infer_output_type(Path(a.out))  # a bad output name is refused before the work, not after it
    input_hash = input_sha256(a.input)  # before anything is written
    if isinstance(a.input, list):  # in memory: the inputs one after another
        import pandas as pd

        df = pd.concat([read_table(x) for x in a.input], ignore_index=True)
    else:
        df = read_table(a.input)
    if len(df) == 0:
        raise ValueError(f"{a.input}: the input has no rows")
    out = func(df, **({"return_fit": True} if a.save_fit else {}), **kwargs)
    fit = None
    if a.save_fit:
        out, fit = out
    from phenovec import __version__

    meta = {"step": step, "arguments": {k: v if isinstance(v, (str, int, float, bool, list, dict, type(None)))
                                        else str(v) for k, v in kwargs.items()},
            "input": a.input, "input_sha256": input_hash, "phenovec_version": __version__}
    write_profiles(out, a.out, output_type=a.output_type, metadata=meta)
    if fit is not None:  # after the output: a failed write leaves no fit without its table
        fit.save(a.save_fit)
    return print_summary({**meta, "rows": len(out), "columns": out.shape[1], "output": a.out, "fit": a.save_fit,
                          "fit_applied": a.fit})


def add_process_parser(stages) -> None:
    pr = stages.add_parser("process", help="collate, aggregate, annotate, normalize, feature-select, spherize, "
                                           "consensus; batch corrections (process batch); recipes")
    sub = pr.add_subparsers(dest="step", required=True)

    p = sub.add_parser("recipes", help="list the packaged recipes (name and what it does)")
    p.set_defaults(run=_list_recipes)

    p = sub.add_parser("show", help="print a recipe's YAML (a packaged name or a file)")
    p.add_argument("recipe", help="packaged recipe name (see `phenovec process recipes`) or a YAML file")
    p.set_defaults(run=_show_recipe)

    p = sub.add_parser("run", help="apply a recipe (ordered steps) to an input")
    p.add_argument("recipe", help="packaged recipe name (see `phenovec process recipes`) or a YAML file")
    p.add_argument("input", nargs="+", help=INPUT_HELP + "; several inputs (e.g. the shards of a sharded profile "
                                                      "run) are read one after another as one table")
    _output(p)
    option(p, "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
           help="override a recipe key: STEP.ARGUMENT=VALUE (e.g. normalize.method=robustize), steps.N.ARGUMENT "
                "for the N-th step (1-based), or name / description; VALUE is read as YAML (repeatable; default: none)")
    option(p, "--platemap", default=None,
           help="platemap file for the recipe's annotate step (same as --set annotate.platemap=FILE; "
                "default: the recipe's, which lincs-cellprofiler leaves unset)")
    p.set_defaults(run=_run_recipe)

    p = sub.add_parser("collate", help="merge CellProfiler Image + Cells/Cytoplasm/Nuclei tables into single cells "
                                       "(pycytominer collate / SingleCells.merge_single_cells)")
    p.add_argument("input", help="a folder of CellProfiler CSV exports (one subfolder per site with Image.csv and "
                                 "one CSV per compartment) or a cytominer-database SQLite file")
    _output(p)
    option(p, "--compartments", nargs="+", default=["cells", "cytoplasm", "nuclei"],
           help="compartment tables to merge")
    option(p, "--strata", nargs="+", default=["Metadata_Plate", "Metadata_Well"],
           help="Image-table columns carried to every cell")
    option(p, "--image-columns", nargs="+", default=["TableNumber", "ImageNumber", "Metadata_Site"],
           help="more Image-table columns carried to every cell")
    option(p, "--image-table", default="Image", help="name of the Image table in a SQLite input")
    p.set_defaults(run=_run_collate)

    p = sub.add_parser("aggregate", help="cells to site/well profiles (streamed from files: bounded memory)")
    _common(p)
    option(p, "--strata", nargs="+", default=["Metadata_Plate", "Metadata_Well"], help="columns to group by")
    option(p, "--operation", choices=["median", "mean"], default="median", help="per-group statistic")
    option(p, "--compute-object-count", action="store_true",
           help="add Metadata_Object_Count (non-missing --object-feature values per group; default: off)")
    option(p, "--object-feature", default="Metadata_ObjectNumber",
           help="column counted by --compute-object-count (default: Metadata_ObjectNumber, or ObjectNumber "
                "when that column is absent)")
    p.set_defaults(run=lambda a: _run_step(a, "aggregate", {
        **({"features": a.features} if a.features else {}), "strata": a.strata, "operation": a.operation,
        "compute_object_count": a.compute_object_count, "object_feature": a.object_feature}))

    p = sub.add_parser("annotate", help="join a platemap (and external metadata) to profiles (pycytominer annotate)")
    p.add_argument("input", nargs="+", help=INPUT_HELP + "; several inputs (e.g. the shards of a sharded profile "
                                                      "run) are read one after another as one table")
    _output(p)
    option(p, "--platemap", required=True,
           help="platemap: .txt / .tsv (tab-separated), .csv or any profile table format (required)")
    option(p, "--join-on", nargs="+", default=["Metadata_well_position", "Metadata_Well"],
           metavar="COLUMN", help="platemap column and profile column to join on (one name: the same in both)")
    option(p, "--external-metadata", default=None, help="another table to left-join (with --external-join-on; default: none)")
    option(p, "--external-join-on", nargs="+", default=None, metavar="COLUMN",
           help="column(s) joining --external-metadata (default: none)")
    option(p, "--no-add-metadata-id", action="store_true",
           help="keep the platemap's column names (default: prefix them with Metadata_)")
    option(p, "--no-clean-cellprofiler", action="store_true",
           help="keep Image_Metadata_Plate/Well/Site (default: rename them Metadata_*)")
    p.set_defaults(run=_run_annotate)

    p = sub.add_parser("normalize", help="standardize / robustize / mad_robustize / inverse_normal / spherize")
    _common(p, meta_features=True)
    option(p, "--method", default="standardize",
           choices=["standardize", "robustize", "mad_robustize", "inverse_normal", "spherize"],
           help="normalization")
    option(p, "--samples", default="all", help=SAMPLES_HELP)
    option(p, "--by", nargs="+", default=None, help="fit per group of these columns, e.g. Metadata_Plate "
                                                     "(default: one fit on all rows)")
    option(p, "--mad-robustize-epsilon", type=float, default=1e-18, help="added to the MAD (mad_robustize)")
    option(p, "--fit", default=None, help="apply this saved fit (.npz) instead of fitting (default: fit)")
    option(p, "--save-fit", default=None, help="save the fitted statistics (.npz; default: not saved)")
    option(p, "--stream", action="store_true",
           help="two passes over the input, bounded memory (Parquet output; default: in memory)")
    p.set_defaults(run=lambda a: _fit_step(a, "normalize", {
        **_feature_kwargs(a), "method": a.method, "samples": a.samples, "by": _by(a.by),
        "mad_robustize_epsilon": a.mad_robustize_epsilon}))

    p = sub.add_parser("spherize", help="ZCA / PCA whitening (-cor variants) fitted on controls")
    _common(p, meta_features=True)
    option(p, "--method", default="ZCA-cor", choices=["ZCA", "PCA", "ZCA-cor", "PCA-cor"], help="whitening")
    option(p, "--samples", default="all", help=SAMPLES_HELP)
    option(p, "--epsilon", type=float, default=1e-6, help="regularization added to the eigenvalues")
    option(p, "--no-center", action="store_true", help="do not center before whitening (default: center)")
    option(p, "--by", nargs="+", default=None,
           help="fit per group (default: one global fit, as the DeepProfiler thesis)")
    option(p, "--fit", default=None, help="apply this saved fit (.npz) instead of fitting (default: fit)")
    option(p, "--save-fit", default=None, help="save the fitted transform (.npz; default: not saved)")
    p.set_defaults(run=lambda a: _fit_step(a, "spherize", {
        **_feature_kwargs(a), "method": a.method, "samples": a.samples, "epsilon": a.epsilon,
        "center": not a.no_center, "by": _by(a.by)}))

    from phenovec.batch import STEPS as BATCH_STEPS

    p = sub.add_parser("batch", help="a batch correction of phenovec.batch (harmony, tvn, the JUMP recipe's steps): "
                                     "fit it (and save the fit), or re-apply a saved fit")
    p.add_argument("correction", choices=BATCH_STEPS, help="the correction (its arguments: --set)")
    p.add_argument("input", nargs="+", help=INPUT_HELP + "; several inputs are read one after another as one table")
    _output(p)
    option(p, "--set", dest="arguments", action="append", default=[], metavar="ARGUMENT=VALUE",
           help="an argument of the correction, VALUE read as YAML, one per --set, e.g. --set "
                "'vars_use=[Metadata_Plate]' --set n_components=50; quote a row filter: --set \"controls=Metadata_"
                "pert_type == 'negcon'\" (repeatable; default: the correction's defaults)")
    option(p, "--fit", default=None, help="re-apply this saved fit (.npz) instead of fitting; for harmony, map the "
                                           "profiles onto the fitted run (Symphony) (default: fit)")
    option(p, "--save-fit", default=None, help="save the fit (.npz; default: not saved)")
    p.set_defaults(run=_run_batch)

    p = sub.add_parser("feature-select", help="variance / frequency / correlation / NA / outlier / blocklist / noise")
    _common(p)
    option(p, "--operation", nargs="+", default=["variance_threshold"],
           help="variance_threshold, frequency_threshold, correlation_threshold, drop_na_columns, blocklist, "
                "drop_outliers, noise_removal (run in the order given, each on the previous ones' survivors)")
    option(p, "--samples", default="all", help=SAMPLES_HELP)
    option(p, "--corr-threshold", type=float, default=0.9,
           help="correlation_threshold: drop one feature of each pair whose signed r is above this (as pycytominer: "
                "r = -0.99 is kept)")
    option(p, "--corr-method", default="pearson", choices=["pearson", "spearman", "kendall"],
           help="correlation_threshold: correlation")
    option(p, "--na-cutoff", type=float, default=0.05, help="drop_na_columns: largest allowed fraction of NA")
    option(p, "--freq-cut", type=float, default=0.05,
           help="frequency_threshold: smallest allowed ratio of the second most common value's count to the most "
                "common's")
    option(p, "--unique-cut", type=float, default=0.01,
           help="frequency_threshold: smallest allowed ratio of distinct values to rows")
    option(p, "--min-variance", type=float, default=1e-6, help="variance_threshold: smallest allowed variance")
    option(p, "--blocklist-name", nargs="+", default=None,
           help="blocklist: which named lists of the blocklist file to use (default: its 'default' list)")
    option(p, "--image-features", action="store_true", help="count Image_ columns as features (pycytominer's "
                                                             "image_features)")
    option(p, "--blocklist-file", default=None, help="blocklist: file of feature names (default: pycytominer's)")
    option(p, "--outlier-cutoff", type=float, default=500, help="drop_outliers: largest allowed |value|")
    option(p, "--noise-removal-perturb-groups", default=None, help="noise_removal: column of perturbation groups (default: none)")
    option(p, "--noise-removal-stdev-cutoff", type=float, default=None,
           help="noise_removal: largest allowed mean within-group standard deviation (default: none)")
    p.set_defaults(run=lambda a: _run_step(a, "feature_select", {
        **({"features": a.features} if a.features else {}), "operation": a.operation, "samples": a.samples,
        "corr_threshold": a.corr_threshold, "corr_method": a.corr_method, "na_cutoff": a.na_cutoff,
        "freq_cut": a.freq_cut, "unique_cut": a.unique_cut, "min_variance": a.min_variance,
        **({"blocklist_name": a.blocklist_name} if a.blocklist_name else {}), "image_features": a.image_features,
        "blocklist_file": a.blocklist_file, "outlier_cutoff": a.outlier_cutoff,
        "noise_removal_perturb_groups": a.noise_removal_perturb_groups,
        "noise_removal_stdev_cutoff": a.noise_removal_stdev_cutoff}))

    p = sub.add_parser("consensus", help="replicates to consensus profiles: median, mean or MODZ")
    _common(p)
    option(p, "--replicate-columns", nargs="+", default=["Metadata_Plate", "Metadata_Well"],
           help="columns whose values identify a replicate group")
    option(p, "--operation", default="median", choices=["median", "mean", "modz"], help="consensus statistic")
    p.set_defaults(run=lambda a: _run_step(a, "consensus", {
        **({"features": a.features} if a.features else {}), "replicate_columns": a.replicate_columns,
        "operation": a.operation}))


def _run_annotate(a) -> dict:
    join = a.join_on[0] if len(a.join_on) == 1 else a.join_on
    if len(a.join_on) > 2:
        raise SystemExit(f"--join-on takes 1 or 2 column names (platemap column, profile column), got {a.join_on}")
    if (a.external_metadata is None) != (a.external_join_on is None):
        raise SystemExit("--external-metadata and --external-join-on go together")
    kwargs = {"platemap": a.platemap, "join_on": join, "add_metadata_id_to_platemap": not a.no_add_metadata_id,
              "clean_cellprofiler": not a.no_clean_cellprofiler}
    if a.external_metadata is not None:
        ext = a.external_join_on
        kwargs.update(external_metadata=a.external_metadata, external_join_on=ext[0] if len(ext) == 1 else ext)
    return _run_step(a, "annotate", kwargs)


def _run_collate(a) -> dict:
    from phenovec import __version__
    from phenovec.io.profiles import write_profiles
    from phenovec.process.collate import collate

    kwargs = {"compartments": a.compartments, "strata": a.strata, "image_columns": a.image_columns,
              "image_table": a.image_table}
    df = collate(a.input, **kwargs)
    meta = {"step": "collate", "arguments": kwargs, "input": a.input, "phenovec_version": __version__}
    write_profiles(df, a.out, output_type=a.output_type, metadata=meta)
    return print_summary({**meta, "rows": len(df), "columns": df.shape[1], "output": a.out})


def _list_recipes(a) -> dict:
    from phenovec.process.recipe import Recipe, packaged_recipes

    rows = {name: Recipe.load(path).description for name, path in packaged_recipes().items()}
    width = max(map(len, rows), default=0)
    for name, desc in rows.items():
        print(f"{name:<{width}}  {desc}")
    return rows


def _show_recipe(a) -> dict:
    from phenovec.process.recipe import recipe_path

    p = recipe_path(a.recipe)
    text = p.read_text()
    print(text, end="" if text.endswith("\n") else "\n")
    return {"recipe": str(p)}


def _run_batch(a) -> dict:
    """``phenovec process batch CORRECTION``: its arguments checked as a recipe's ``--set`` keys are."""
    from phenovec.batch import steps
    from phenovec.process.recipe import Recipe, step_arguments

    if (a.fit or a.save_fit) and "fit" not in step_arguments(a.correction):
        raise ValueError(f"{a.correction} has no fit to save or re-apply")
    recipe = Recipe.from_obj({"name": a.correction, "steps": [{a.correction: {}}]})
    kwargs = recipe.with_overrides([f"{a.correction}.{item}" for item in a.arguments]).steps[0][1]
    return _fit_step(a, a.correction, kwargs, func=getattr(steps, a.correction))


def _run_recipe(a) -> dict:
    from phenovec.process.recipe import Recipe, apply_recipe

    overrides = list(a.overrides)
    if a.platemap is not None:
        overrides.append(("annotate.platemap", a.platemap))
    r = Recipe.load(a.recipe, overrides=overrides)
    _one_or_many(a)
    df = apply_recipe(r, a.input, a.out, a.output_type, progress=show_progress(a))
    prov = df.attrs["phenovec"]
    print(json.dumps(prov, indent=2, default=str))
    return prov


def print_summary(summary: dict) -> dict:
    print(json.dumps(summary, indent=2, default=str))
    return summary
