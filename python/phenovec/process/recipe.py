"""Recipes: an ordered list of processing steps, written in YAML or Python, applied by ``phenovec process run``.

A recipe is a mapping ``{"name": ..., "description": ..., "steps": [{STEP: {kwargs}}, ...]}`` (YAML or a Python
dict/list), e.g.::

    name: well-profiles
    description: single cells to normalized, feature-selected, spherized consensus profiles
    steps:
      - aggregate: {strata: [Metadata_Plate, Metadata_Well], operation: median}
      - annotate: {platemap: null, join_on: [Metadata_well_position, Metadata_Well]}
      - normalize: {method: mad_robustize, samples: "Metadata_treatment == 'DMSO'", by: Metadata_Plate}
      - feature_select: {operation: [variance_threshold, correlation_threshold, drop_na_columns, blocklist]}
      - spherize: {method: ZCA-cor, samples: "Metadata_treatment == 'DMSO'"}
      - consensus: {replicate_columns: [Metadata_treatment], operation: modz}

Steps are the ``phenovec.process`` functions of the same name; their keyword arguments are those of the
function (pycytominer's names). When the input is a file or Zarr store and the first step is ``aggregate``, it
runs streamed (``aggregate_stream``: memory bounded by the number of groups, not of rows) and the later steps
run in memory on the aggregated profiles. The output records, in the Parquet metadata (key ``phenovec``) or the
AnnData ``uns["phenovec"]``, the recipe itself, its SHA-256, the input's SHA-256 (file bytes; for a directory
the sorted files' bytes), the phenovec version and the shape after each step.

Overrides (``Recipe.load(..., overrides=["normalize.method=robustize"])``, the CLI's ``--set``): ``STEP.ARGUMENT``
for a step that occurs once, ``steps.N.ARGUMENT`` for the N-th step (1-based), deeper keys into a mapping
argument (``consensus.modz_args.method``), or ``name`` / ``description``. The value is read with
YAML (:func:`phenovec.io.yaml_load.load_yaml`: ``1e-6`` a float, ``[a, b]`` a list, ``null`` None). A key that names no step, or an argument
the step's function does not take, is a ``ValueError`` naming the key. A step argument the recipe leaves ``null``
but the step needs (``annotate``'s ``platemap``) is an error naming the key to set, before anything runs.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

# batch correction (phenovec.batch): Harmony, TVN and the JUMP profiling recipe's steps
from phenovec.batch import STEPS as BATCH_STEPS
from phenovec.error_context import with_context
from phenovec.io.row_filter import parse_filter
from phenovec.io.yaml_load import load_yaml

STEP_NAMES = ("aggregate", "annotate", "normalize", "feature_select", "spherize", "consensus",
              "moa_profiles") + BATCH_STEPS
# the arguments of any step that are row filters (phenovec.io.row_filter), checked when the recipe is read
FILTER_ARGUMENTS = ("samples", "controls", "negcon", "poscon", "background", "rows")
# the batch steps' row filters that fitting needs (re-applying a fit does not)
NEEDED_TO_FIT = {"tvn": "controls", "sphere_by_map": "negcon", "arm_correction": "background"}


def _step_function(name: str) -> Callable:
    if name == "aggregate":
        from phenovec.process.aggregate import aggregate as f
    elif name == "annotate":
        from phenovec.process.annotate import annotate as f
    elif name == "normalize":
        from phenovec.process.normalize import normalize as f
    elif name == "feature_select":
        from phenovec.process.feature_select import feature_select as f
    elif name == "spherize":
        from phenovec.process.spherize import spherize as f
    elif name == "consensus":
        from phenovec.process.consensus import consensus as f
    elif name == "moa_profiles":
        from phenovec.process.moa_profiles import moa_profiles as f
    elif name in BATCH_STEPS:
        from phenovec.batch import steps as batch_steps

        f = getattr(batch_steps, name)
    else:
        raise ValueError(f"unknown recipe step {name!r}; steps are {', '.join(STEP_NAMES)}")
    return f


@dataclass
class Recipe:
    """An ordered list of ``(step name, keyword arguments)``."""

    steps: list[tuple[str, dict[str, Any]]]
    name: str = "recipe"
    source: dict = field(default_factory=dict)
    description: str = ""

    @classmethod
    def from_obj(cls, obj) -> "Recipe":
        """From a dict ``{"name", "steps"}``, a list of steps, or a Recipe. Each step is ``{name: kwargs}``,
        ``(name, kwargs)`` or a bare name. Unknown step names and non-mapping arguments raise ``ValueError``
        naming the step's position."""
        if isinstance(obj, Recipe):
            return obj
        name = "recipe"
        description = ""
        raw = obj
        if isinstance(obj, dict):
            unknown = set(obj) - {"name", "steps", "description"}
            if unknown:
                raise ValueError(f"recipe: unknown key {sorted(unknown)[0]!r} (use name, description, steps)")
            if "steps" not in obj:
                raise ValueError("recipe: no 'steps' list")
            name = str(obj.get("name", name))
            description = "" if obj.get("description") is None else " ".join(str(obj["description"]).split())
            raw = obj["steps"]
        if not isinstance(raw, (list, tuple)) or not raw:
            raise ValueError("recipe: 'steps' must be a non-empty list")
        steps = []
        for i, s in enumerate(raw, 1):
            if isinstance(s, str):
                step, kwargs = s, {}
            elif isinstance(s, dict) and len(s) == 1:
                step, kwargs = next(iter(s.items()))
            elif isinstance(s, (list, tuple)) and len(s) == 2:
                step, kwargs = s
            else:
                raise ValueError(f"recipe step {i}: expected {{name: {{arguments}}}}, got {s!r}")
            kwargs = {} if kwargs is None else kwargs
            if step not in STEP_NAMES:
                raise ValueError(f"recipe step {i}: unknown step {step!r}; steps are {', '.join(STEP_NAMES)}")
            if not isinstance(kwargs, dict):
                raise ValueError(f"recipe step {i} ({step}): arguments must be a mapping, got {kwargs!r}")
            bad = {"output_file", "profiles", "population_df"} & set(kwargs)
            if bad:
                raise ValueError(f"recipe step {i} ({step}): {sorted(bad)[0]!r} is set by the recipe runner, not the step")
            allowed = step_arguments(step)
            unknown = [k for k in kwargs if k not in allowed]
            if unknown:  # refused when read, not when the step runs (after the steps before it)
                raise ValueError(f"recipe step {i} ({step}): unknown argument {unknown[0]!r} (arguments: "
                                 f"{', '.join(allowed)})")
            for key in FILTER_ARGUMENTS:  # a bad filter is refused when the recipe is read, before any step
                value = kwargs.get(key)
                if value is not None and not isinstance(value, str):  # YAML read "a: b" as a mapping, 1 as a number
                    raise ValueError(f"recipe step {i} ({step}) {key}: a row filter must be text, got "
                                     f"{type(value).__name__} {value!r}; quote it (--set {key}=\"...\", or "
                                     f"{key}: \"...\" in YAML)")
                if isinstance(value, str) and value != "all":
                    parse_filter(value, key=f"recipe step {i} ({step}) {key}")
            steps.append((str(step), dict(kwargs)))
        return cls(steps=steps, name=name, source={"name": name, "steps": [{s: k} for s, k in steps]},
                   description=description)

    @classmethod
    def load(cls, path: str | os.PathLike, overrides: Iterable = ()) -> "Recipe":
        """Read a YAML (or JSON) recipe file, or a packaged recipe by name (see :func:`packaged_recipes`), and apply
        ``overrides`` (see the module docstring)."""
        import yaml

        p = recipe_path(path)
        try:
            obj = load_yaml(p.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML: {e}") from None
        try:
            return cls.from_obj(obj).with_overrides(overrides)
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None

    def with_overrides(self, overrides: Iterable) -> "Recipe":
        """A copy with ``overrides`` applied: ``"KEY=VALUE"`` strings (VALUE read as YAML) or ``(KEY, value)`` pairs
        (value taken as is); see the module docstring for the keys."""
        steps = [(s, copy.deepcopy(k)) for s, k in self.steps]
        name, description = self.name, self.description
        for item in overrides:
            key, value = _parse_override(item)
            parts = key.split(".")
            if parts == ["name"]:
                name = str(value)
                continue
            if parts == ["description"]:
                description = "" if value is None else str(value)
                continue
            if parts[0] == "steps":
                if len(parts) < 2 or not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(steps):
                    raise ValueError(f"--set {key}: 'steps.N.ARGUMENT' needs N between 1 and {len(steps)}")
                i, rest = int(parts[1]) - 1, parts[2:]
            elif parts[0] in STEP_NAMES:
                where = [i for i, (s, _) in enumerate(steps) if s == parts[0]]
                if not where:
                    raise ValueError(f"--set {key}: unknown key: the recipe has no {parts[0]} step "
                                     f"(steps: {', '.join(s for s, _ in steps)})")
                if len(where) > 1:
                    raise ValueError(f"--set {key}: the recipe has {len(where)} {parts[0]} steps (steps "
                                     f"{', '.join(str(i + 1) for i in where)}); use steps.N.{'.'.join(parts[1:])}")
                i, rest = where[0], parts[1:]
            else:
                raise ValueError(f"--set {key}: unknown key {parts[0]!r} (use STEP.ARGUMENT with a step of "
                                 f"{', '.join(s for s, _ in steps)}, steps.N.ARGUMENT, name or description)")
            step, kwargs = steps[i]
            if not rest or not all(rest):
                raise ValueError(f"--set {key}: name an argument of step {i + 1} ({step}), e.g. {step}.ARGUMENT")
            allowed = step_arguments(step)
            if rest[0] not in allowed:
                raise ValueError(f"--set {key}: unknown key: {step} has no argument {rest[0]!r} "
                                 f"(arguments: {', '.join(allowed)})")
            target = kwargs
            for j, k in enumerate(rest[:-1]):
                nxt = target.get(k)
                if nxt is None:
                    nxt = target[k] = {}
                if not isinstance(nxt, dict):
                    raise ValueError(f"--set {key}: unknown key: {'.'.join(rest[: j + 1])} of {step} is "
                                     f"{type(nxt).__name__}, not a mapping")
                target = nxt
            target[rest[-1]] = value
        r = Recipe.from_obj({"name": name, "description": description or None,
                             "steps": [{s: k} for s, k in steps]})
        return r

    def check_required(self) -> None:
        """``ValueError`` naming the key to set when a step lacks an argument it needs (annotate's platemap; the
        batch steps' row filters that fitting needs, when no fit is given)."""
        for i, (step, kwargs) in enumerate(self.steps, 1):
            needed = NEEDED_TO_FIT.get(step)
            if needed and kwargs.get(needed) is None and kwargs.get("fit") is None:
                example = "Metadata_zfpkm < -3" if step == "arm_correction" else "Metadata_pert_type == 'negcon'"
                raise ValueError(f"recipe {self.name!r}, step {i} ({step}) needs {needed} to fit (a row filter such "
                                 f"as \"{example}\"), unless fit names a saved fit to re-apply")
            if step == "annotate" and kwargs.get("platemap") is None:
                raise ValueError(f"recipe {self.name!r}, step {i} (annotate) needs a platemap: give --platemap FILE "
                                 "(or --set annotate.platemap=FILE; from Python, overrides=[('annotate.platemap', "
                                 "FILE)])")

    def to_dict(self) -> dict:
        d = {"name": self.name, "steps": [{s: k} for s, k in self.steps]}
        if self.description:
            d["description"] = self.description
        return d

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


_RUNNER_ARGUMENTS = ("profiles", "population_df", "output_file", "output_type", "return_fit")


def _stream_only_arguments() -> list[str]:
    """``aggregate_stream``'s arguments that ``aggregate`` lacks: how a streamed first step runs (batch size, memory
    budget, spill folder, progress), not what it computes, so an in-memory aggregate ignores them."""
    from phenovec.process.aggregate import aggregate, aggregate_stream

    plain = set(inspect.signature(aggregate).parameters)
    return [a for a in inspect.signature(aggregate_stream).parameters if a not in plain and a != "source"]


def step_arguments(step: str) -> list[str]:
    """The keyword arguments a recipe may give ``step`` (its function's, less those the runner sets; for
    ``aggregate`` also ``aggregate_stream``'s, which runs it as a recipe's first step on a file)."""
    params = list(inspect.signature(_step_function(step)).parameters)
    if step == "aggregate":
        from phenovec.process.aggregate import aggregate_stream

        params += [a for a in inspect.signature(aggregate_stream).parameters if a not in params]
    return [a for a in params if a not in _RUNNER_ARGUMENTS and a != "source"]


def _parse_override(item) -> tuple[str, Any]:
    import yaml

    if isinstance(item, (tuple, list)) and len(item) == 2:
        return str(item[0]).strip(), item[1]
    if not isinstance(item, str) or "=" not in item:
        raise ValueError(f"--set {item!r}: expected KEY=VALUE")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key:
        raise ValueError(f"--set {item!r}: empty key")
    try:
        value = load_yaml(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"--set {key}: the value {text!r} is not a YAML scalar or list: {e}") from None
    return key, value


def recipe_path(recipe: str | os.PathLike) -> Path:
    """A recipe file, or the packaged recipe of that name; ``FileNotFoundError`` naming both otherwise."""
    p = Path(recipe)
    if not p.exists() and str(recipe) in packaged_recipes():
        p = packaged_recipes()[str(recipe)]
    if not p.is_file():
        raise FileNotFoundError(f"recipe not found: {p} (packaged recipes: {', '.join(sorted(packaged_recipes()))})")
    return p


def packaged_recipes() -> dict[str, Path]:
    """Recipes shipped with phenovec (``phenovec/process/recipes/*.yaml``), by name."""
    return {q.stem: q for q in sorted((Path(__file__).parent / "recipes").glob("*.yaml"))}


def input_sha256(source) -> str:
    """SHA-256 of an input: a file's bytes, a directory's files (sorted relative paths and bytes), a DataFrame's
    pandas row hashes (index excluded) and column names, or of a list of inputs the hashes of each in order."""
    h = hashlib.sha256()
    if isinstance(source, (list, tuple)):  # several inputs read as one table, in order
        for item in source:
            h.update(input_sha256(item).encode())
        return h.hexdigest()
    if isinstance(source, pd.DataFrame):
        h.update(json.dumps([str(c) for c in source.columns]).encode())
        h.update(pd.util.hash_pandas_object(source, index=False).to_numpy().tobytes())
        return h.hexdigest()
    p = Path(source)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for q in files:
        if p.is_dir():
            h.update(str(q.relative_to(p)).encode())
        with open(q, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def apply_recipe(
    recipe,
    source,
    output_file: str | os.PathLike | None = None,
    output_type: str | None = None,
    progress: bool = True,
    features_default: str = "recipe",
) -> pd.DataFrame:
    """Apply ``recipe`` (Recipe, dict/list, or a YAML path) to ``source`` (DataFrame, or a CSV/Parquet file,
    Parquet directory or Zarr embedding store); write ``output_file`` (csv/parquet/h5ad/zarr by name or
    ``output_type``) with the provenance described in the module docstring, and return the final table.

    ``features_default="non-metadata"``: a step without ``features`` gets every non-``Metadata_`` column of the
    table it receives (for learned embeddings such as ``feature_0``..., which CellProfiler-prefix inference
    does not see); the default ``"recipe"`` leaves the steps' own defaults (pycytominer's ``"infer"``)."""
    if features_default not in ("recipe", "non-metadata"):
        raise ValueError(f"features_default must be 'recipe' or 'non-metadata', got {features_default!r}")
    from tqdm.auto import tqdm

    from phenovec import __version__
    from phenovec.io.profiles import read_table, write_profiles

    r = Recipe.load(recipe) if isinstance(recipe, (str, os.PathLike)) else Recipe.from_obj(recipe)
    r.check_required()
    log = []
    df = None
    steps = list(r.steps)
    is_path = not isinstance(source, pd.DataFrame)
    bar = tqdm(steps, desc=f"recipe {r.name}", disable=not progress, unit="step")
    for i, (step, kwargs) in enumerate(bar):
        bar.set_postfix_str(step)
        t0 = time.perf_counter()
        if i == 0 and step == "aggregate" and is_path:
            from phenovec.process.aggregate import aggregate_stream

            df = aggregate_stream(source, **kwargs)
        else:
            if df is None:
                if isinstance(source, (list, tuple)):  # several inputs, one after another (in memory here)
                    df = pd.concat([read_table(x) for x in source], ignore_index=True)
                else:
                    df = read_table(source) if is_path else source
                if len(df) == 0:
                    raise ValueError(f"{source if is_path else 'the input DataFrame'}: the input has no rows")
            if step == "aggregate":  # in memory: the streaming knobs do not apply
                kwargs = {k: v for k, v in kwargs.items() if k not in set(_stream_only_arguments())}
            if features_default == "non-metadata" and "features" not in kwargs and step != "annotate":
                kwargs = {**kwargs, "features": [c for c in df.columns if not str(c).startswith("Metadata_")]}
            try:
                df = _step_function(step)(df, **kwargs)
            except (ValueError, KeyError) as e:  # name the step: a recipe's errors come from any of them
                raise with_context(e, f"recipe {r.name!r}, step {i + 1} ({step})") from e.__cause__
        log.append({"step": step, "rows": int(len(df)), "columns": int(df.shape[1]),
                    "seconds": round(time.perf_counter() - t0, 3)})
    provenance = {
        "recipe": r.to_dict(),
        "recipe_sha256": r.sha256(),
        "input": str(source) if is_path else "DataFrame",
        "input_sha256": input_sha256(source),
        "phenovec_version": __version__,
        "steps": log,
    }
    df.attrs["phenovec"] = provenance
    if output_file is not None:
        write_profiles(df, output_file, output_type=output_type, metadata=provenance)
    return df
