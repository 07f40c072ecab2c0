"""Row filters (phenovec.io.row_filter): the grammar selects the rows pandas' query selects for the same trusted
string, and every string outside it (code injection in any form) is refused at parse time, naming the key, before
anything runs; end to end through recipes, ``phenovec process``, the ``phenovec run`` configuration and the report."""
from __future__ import annotations

import random
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from phenovec.io.row_filter import MAX_LENGTH, FilterColumnError, filter_mask, parse_filter


# ---------------------------------------------------------------------------------------------------------- data
def table(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """Numbers with NaN, strings with missing values, booleans, a name with a space: what filters meet."""
    rng = np.random.default_rng(seed)
    a = rng.integers(-3, 4, n).astype(float)
    a[rng.random(n) < 0.2] = np.nan
    c = rng.normal(0, 2, n).round(1)
    c[rng.random(n) < 0.15] = np.nan
    s = np.array(rng.choice(["DMSO", "cpd_a", "cpd_b", "negcon"], n), dtype=object)
    s[rng.random(n) < 0.15] = None
    s[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame({
        "Metadata_a": a, "Metadata_c": c, "Metadata_n": rng.integers(0, 5, n),
        "Metadata_s": s, "Metadata_t": rng.choice(["apple", "kiwi", "mango", "pear"], n),
        "Metadata_b": rng.random(n) < 0.5, "Metadata Plate": rng.choice(["P1", "P2", "P 3"], n),
    })


def pandas_mask(df: pd.DataFrame, text: str) -> np.ndarray:
    """What pandas' query selects for a trusted string (the reference)."""
    return np.asarray(df.index.isin(df.query(text).index))


# ------------------------------------------------------------------------------------------------------- grammar
PYCYTOMINER = [
    "Metadata_s == 'DMSO'", "Metadata_s == 'negcon'", "Metadata_s in ['cpd_a', 'cpd_b']",
    "(Metadata_n == 1) & (Metadata_s != 'DMSO')", "Metadata_s != 'DMSO'", "Metadata_s not in ('DMSO',)",
    "Metadata_n == 1 & Metadata_s == 'DMSO'", "Metadata_n == 1 | Metadata_s == 'DMSO'",
    "`Metadata Plate` == 'P 3'", "`Metadata Plate` in ['P1'] and Metadata_b", "Metadata_b", "~Metadata_b",
    "not Metadata_b", "Metadata_b == True", "Metadata_a.isna()", "Metadata_s.notna()", "Metadata_s.isnull()",
    "Metadata_c.notnull() & ~Metadata_b", "-1 < Metadata_a <= 2", "Metadata_a > -1.5", "2 >= Metadata_a",
    "Metadata_a == Metadata_c", "Metadata_a != Metadata_c", "Metadata_a < Metadata_c", "Metadata_a == [1, -2]",
    "Metadata_a != [1, -2]", "Metadata_s == None", "Metadata_s != None", "Metadata_a != Metadata_a",
    "Metadata_t < 'kiwi'", "Metadata_t >= 'mango' or Metadata_a.isna()", "Metadata_s == 'it''s'",
    "Metadata_a in [1.0, 2, None]", "+1 == Metadata_a", "index < 10", "index in [0, 3, 5]",
]


@pytest.mark.parametrize("text", PYCYTOMINER)
def test_accepted_forms_select_what_pandas_query_selects(text):
    df = table()
    got = filter_mask(df, text, key="samples")
    assert got.dtype == bool and got.shape == (len(df),)
    np.testing.assert_array_equal(got, pandas_mask(df, text))


def _atom(rng: random.Random) -> str:
    num = lambda: rng.choice(["0", "1", "-1", "2.5", "-2", "3", "1e0", "+2"])  # noqa: E731
    word = lambda: repr(rng.choice(["DMSO", "cpd_a", "cpd_b", "negcon", "nope"]))  # noqa: E731
    op = lambda: rng.choice(["==", "!=", "<", "<=", ">", ">="])  # noqa: E731
    numcol = lambda: rng.choice(["Metadata_a", "Metadata_c", "Metadata_n"])  # noqa: E731
    forms = [
        lambda: f"{numcol()} {op()} {num()}",
        lambda: f"{num()} {op()} {numcol()}",
        lambda: f"{numcol()} {op()} {numcol()}",
        lambda: f"{num()} {rng.choice(['<', '<='])} {numcol()} {rng.choice(['<', '<='])} {num()}",
        lambda: f"Metadata_s {rng.choice(['==', '!='])} {word()}",
        lambda: f"Metadata_t {op()} {repr(rng.choice(['kiwi', 'apple', 'z']))}",
        lambda: f"Metadata_s {rng.choice(['in', 'not in'])} [{', '.join(word() for _ in range(rng.randint(1, 3)))}]",
        lambda: f"{numcol()} {rng.choice(['in', 'not in'])} ({', '.join(num() for _ in range(rng.randint(1, 3)))},)",
        lambda: (f"{rng.choice(['Metadata_a', 'Metadata_s', 'Metadata_c'])}."
                 f"{rng.choice(['isna', 'notna', 'isnull', 'notnull'])}()"),
        lambda: rng.choice(["Metadata_b", "~Metadata_b", "Metadata_b == False"]),
        lambda: f"`Metadata Plate` {rng.choice(['==', '!='])} {repr(rng.choice(['P1', 'P2', 'P 3']))}",
    ]
    return rng.choice(forms)()


def _expr(rng: random.Random, depth: int) -> str:
    if depth == 0 or rng.random() < 0.3:
        return _atom(rng)
    kind = rng.choice(["and", "or", "&", "|", "not", "~", "bare&", "bare|"])
    if kind in ("not", "~"):
        return f"{kind}({_expr(rng, depth - 1)})" if kind == "~" else f"not ({_expr(rng, depth - 1)})"
    if kind.startswith("bare"):  # pandas gives & / | boolean precedence: a == 1 & b == 2
        return f"{_atom(rng)} {kind[4:]} {_atom(rng)}"
    return f"({_expr(rng, depth - 1)}) {kind} ({_expr(rng, depth - 1)})"


@pytest.mark.parametrize("nullable", [False, True])
def test_random_filters_select_what_pandas_query_selects(nullable):
    """Also on pandas' nullable dtypes (``convert_dtypes``: string, Int64, boolean; a Parquet file written from
    them reads back so): a missing string != 'x' is True in query, where the string column's own operator says
    <NA> and had selected no row."""
    rng = random.Random(22)
    seen = 0
    for i in range(300):
        df = table(n=40, seed=i % 7)
        if nullable:
            df = df.convert_dtypes()
        text = _expr(rng, 3)
        try:
            want = pandas_mask(df, text)
        except TypeError:  # e.g. pandas cannot order a string against NaN: ours must refuse too
            with pytest.raises(ValueError, match="^samples"):
                filter_mask(df, text, key="samples")
            continue
        np.testing.assert_array_equal(filter_mask(df, text, key="samples"), want, err_msg=text)
        seen += 1
    assert seen > 250


def test_nan_semantics_and_columns():
    df = pd.DataFrame({"x": [1.0, np.nan, 2.0], "s": ["a", None, np.nan], "y": [1.0, 5.0, np.nan]})
    assert filter_mask(df, "x == 1", key="k").tolist() == [True, False, False]
    assert filter_mask(df, "x != 1", key="k").tolist() == [False, True, True]  # NaN != x is True
    assert filter_mask(df, "s == 'a'", key="k").tolist() == [True, False, False]
    assert filter_mask(df, "s != 'a'", key="k").tolist() == [False, True, True]
    assert filter_mask(df, "x < y", key="k").tolist() == [False, False, False]
    assert filter_mask(df, "s.isna()", key="k").tolist() == [False, True, True]
    f = parse_filter("(x > 0) & `s` in ['a'] | y.notna() and x == y", key="k")
    assert f.columns == ("x", "s", "y")
    nullable = pd.DataFrame({"v": pd.array([1, None, 3], dtype="Int64"),
                             "w": pd.array(["a", None, "b"], dtype="string")})
    assert filter_mask(nullable, "v != 1", key="k").tolist() == pandas_mask(nullable, "v != 1").tolist()
    assert filter_mask(nullable, "w == 'a' | v > 2", key="k").tolist() == [True, False, True]
    for text in ("w != 'a'", "~(w == 'a')", "w != 'a' | w == 'a'", "w != w", "w >= 'a'", "w != 1", "w != None",
                 "w == None"):
        assert filter_mask(nullable, text, key="k").tolist() == pandas_mask(nullable, text).tolist(), text
    assert filter_mask(nullable, "w != 'a'", key="k").tolist() == [False, True, True]


def test_a_missing_column_or_uncomparable_values_are_named():
    df = table()
    with pytest.raises(FilterColumnError, match=r"^normalize samples: .*'Metadata_sx'.*did you mean 'Metadata_s'"):
        filter_mask(df, "Metadata_sx == 'DMSO'", key="normalize samples")
    with pytest.raises(KeyError):  # a KeyError too, for callers that catch missing columns
        filter_mask(df, "nope == 1", key="k")
    many = pd.DataFrame({f"Cells_{i}": [0.0] for i in range(40)})
    with pytest.raises(ValueError, match=r"Cells_0.*\(40 in all\)"):
        filter_mask(many, "Metadata_x == 1", key="k")
    with pytest.raises(ValueError, match=r"^k: cannot evaluate column 'Metadata_s' < 3"):
        filter_mask(df, "Metadata_s < 3", key="k")
    with pytest.raises(ValueError, match=r"^k: column 'Metadata_a' .* is not boolean"):
        filter_mask(df, "Metadata_a & Metadata_b", key="k")
    with pytest.raises(TypeError, match="^k: a filter must be a string"):
        parse_filter(3, key="k")
    for empty in ("", "   "):
        with pytest.raises(ValueError, match="^k: the filter is empty"):
            parse_filter(empty, key="k")


# ------------------------------------------------------------------------------------------------------ injection
def payloads(target) -> list[str]:
    """Filters that, given to pandas' query or to eval, would create ``target`` (or read / poke Python
    internals): each must be refused when parsed."""
    t = f"touch {target}"
    run = f"__import__('os').system('{t}')"
    return [
        f'@pd.io.common.os.system("{t}") == 0',
        f"@pd.io.common.os.system('{t}')",
        f"Metadata_s == @pd.io.common.os.system('{t}')",
        f"{run} == 0",
        run,
        f"Metadata_s == {run}",
        f"Metadata_s in [{run}]",
        f"Metadata_s.isna({run})",
        f"Metadata_s.__class__.__mro__[1].__subclasses__() == 0",
        "Metadata_s.__class__ == 0",
        "().__class__.__base__.__subclasses__()",
        f"(lambda: {run})() == 0",
        f"(lambda x: x)(1) == Metadata_a",
        "f'{" + run + "}' == Metadata_s",
        f"Metadata_s[{run}] == 0",
        f"Metadata_s[0] == 'a'",
        f"open('{target}', 'w') == 0",
        f"open('{target}', 'w').close()",
        f"[{run} for _ in [0]] == 0",
        f"{{{run} for _ in [0]}}",
        f"Metadata_s in [x for x in [{run}]]",
        f"any({run} for _ in [0])",
        f"(y := {run}) == 0",
        f"Metadata_s == [*[{run}]]",
        f"Metadata_s.str.contains('a') == True",
        f"getattr(Metadata_s, 'isna')()",
        f"eval(\"{run}\") == 0",
        f"exec(\"{run}\")",
        f"globals()['os'].system('{t}')",
        "__builtins__ == 0",
        "__import__ == 0",
        f"os.system('{t}') == 0",
        f"Metadata_a + {run} == 1",
        f"Metadata_a if {run} else Metadata_b",
        f"{{'a': {run}}} == Metadata_s",
        f"Metadata_s == b'x'",
        f"Metadata_s == 1j",
        f"Metadata_s == ...",
        f"Metadata_a == -({run})",
        f"~{run}",
        f"not {run}",
        f"Metadata_b & {run}",
        f"Metadata_b | {run}",
        f"Metadata_b and {run}",
        f"`Metadata Plate`.__class__ == 0",
        f"Metadata_s == 1; {run}",
        f"Metadata_s == 1\n{run}",
        "Metadata_s == 'a",
        "`Metadata_s == 'a'",
        "Metadata_s ==",
        f"{'not ' * 200}{run}",
        f"{'~(' * 120}Metadata_b{')' * 120}",
        f"Metadata_a == {'[' * 300}1{']' * 300}",
        f"Metadata_a == {'-' * 5000}1",
        f"{'Metadata_a == 1 or ' * (MAX_LENGTH // 18)}{run}",
        f"Metadata_a in [{', '.join(['1'] * (MAX_LENGTH // 3))}] or {run}",
        f"Metadata_a == {'(' * 3000}1{')' * 3000}",
        f"Metadata_a == 1 or {run} " + " " * MAX_LENGTH,
    ]


def test_every_injection_form_is_refused_at_parse_time_naming_the_key(tmp_path):
    target = tmp_path / "PWNED"
    forms = payloads(target)
    assert len(forms) >= 50
    df = table()
    for text in forms:
        with pytest.raises(ValueError) as e:
            parse_filter(text, key="samples of step normalize")
        assert str(e.value).startswith("samples of step normalize: "), (text, str(e.value))
        with pytest.raises(ValueError, match="^samples of step normalize: "):
            filter_mask(df, text, key="samples of step normalize")
        assert not target.exists(), text
        assert len(str(e.value)) < 2000, "the error quotes a bounded piece of the filter"


def test_the_refusal_names_the_offending_piece():
    cases = {
        "Metadata_s.__class__ == 0": "attribute access is not allowed: 'Metadata_s.__class__'",
        "@x == 1": "'@'",
        "open('f') == 0": "calls other than col.isna()",
        "Metadata_s[0] == 'a'": "subscripts are not allowed: 'Metadata_s[0]'",
        "(lambda: 0)() == 0": "calls other than",
        "Metadata_a == (lambda: 0)": "lambdas are not allowed",
        "f'{Metadata_s}' == 'a'": "f-strings are not allowed",
        "(y := 1) == Metadata_a": "':=' is not allowed",
        "[x for x in [1]] == Metadata_a": "comprehensions are not allowed",
        "__dict__ == 1": "names starting with '__' are not allowed: '__dict__'",
        "Metadata_a + 1 == 2": "arithmetic is not allowed: 'Metadata_a + 1'",
        "'DMSO'": "a literal alone is not a condition",
        "1 == 1": "a comparison needs at least one column",
        "Metadata_a in Metadata_c": "'in' needs a list of literals",
        f"not {'not ' * 100}Metadata_b": "nested more than",
        "Metadata_s in [Metadata_t]": "expected a literal",
        "Metadata_s.isna(1)": ".isna() takes no arguments",
        "Metadata_s == b'x'": "bytes literals are not allowed",
    }
    for text, piece in cases.items():
        with pytest.raises(ValueError, match="^--query: ") as e:
            parse_filter(text, key="--query")
        assert piece in str(e.value), (text, str(e.value))


def test_backticks_and_strings_are_data_never_code(tmp_path):
    """A payload inside a string literal or a backtick-quoted column name is a value or a name: never run."""
    target = tmp_path / "PWNED"
    run = f"__import__('os').system('touch {target}')"
    df = table()
    assert not filter_mask(df, f'Metadata_s == "{run}"', key="k").any()
    with pytest.raises(FilterColumnError, match="^k: .*names column"):
        filter_mask(df, f"`{run}` == 0", key="k")
    odd = df.assign(**{"a & b | @c": df["Metadata_a"]})  # &, |, @ inside backticks belong to the name
    np.testing.assert_array_equal(filter_mask(odd, "`a & b | @c` > 0", key="k"), odd["a & b | @c"].to_numpy() > 0)
    assert parse_filter("Metadata_s == 'a & b | @c'", key="k").columns == ("Metadata_s",)
    assert not target.exists()


# ----------------------------------------------------------------------------------------- the process functions
def profiles(n: int = 48, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "Metadata_Plate": np.repeat(["P1", "P2"], n // 2),
        "Metadata_broad_sample": np.tile(["DMSO", "cpd_a", "cpd_b", "cpd_c"], n // 4),
    })
    for i in range(6):
        df[f"Cells_f{i}"] = rng.normal(i, 1 + i / 3, n)
    return df


def test_process_steps_refuse_injection_before_anything_runs(tmp_path):
    from phenovec.process import feature_select, normalize, spherize
    from phenovec.process.columns import select_samples
    from phenovec.process.normalize import normalize_stream

    target = tmp_path / "PWNED"
    df = profiles()
    for text in payloads(target)[:12]:
        for call in (lambda: select_samples(df, text), lambda: normalize(df, samples=text),
                     lambda: spherize(df, samples=text),
                     lambda: feature_select(df, operation="variance_threshold", samples=text),
                     lambda: normalize(df, samples=text, method="mad_robustize", by="Metadata_Plate")):
            with pytest.raises(ValueError, match="^samples: "):
                call()
        # streamed: refused before the source is even opened (this one does not exist)
        with pytest.raises(ValueError, match="^samples: "):
            normalize_stream(tmp_path / "absent.parquet", tmp_path / "out.parquet", samples=text)
        assert not target.exists(), text
    assert not (tmp_path / "out.parquet").exists()


def test_process_steps_keep_pycytominer_samples(tmp_path):
    """The accepted spelling fits on the same rows as before (pandas' query on the same trusted string)."""
    from phenovec.process import normalize
    from phenovec.process.columns import select_samples
    from phenovec.process.normalize import normalize_stream

    df = profiles()
    q = "Metadata_broad_sample == 'DMSO'"
    np.testing.assert_array_equal(select_samples(df, q), pandas_mask(df, q))
    assert select_samples(df, "all").all() and select_samples(df, None).all()
    with pytest.raises(ValueError, match="samples query .*'nope'.* matches no row"):
        select_samples(df, "Metadata_broad_sample == 'nope'")
    out = normalize(df, samples=q)
    ctrl = df[df["Metadata_broad_sample"] == "DMSO"]["Cells_f2"]
    np.testing.assert_allclose(out["Cells_f2"], (df["Cells_f2"] - ctrl.mean()) / ctrl.std(ddof=0), rtol=1e-10)
    src = tmp_path / "p.parquet"
    df.to_parquet(src)
    normalize_stream(src, tmp_path / "n.parquet", samples=q, batch_rows=7)
    np.testing.assert_allclose(pd.read_parquet(tmp_path / "n.parquet")["Cells_f2"], out["Cells_f2"], rtol=1e-9)


# ---------------------------------------------------------------------------------------------------- end to end
def test_recipe_with_an_injected_samples_is_refused_from_the_cli(tmp_path, capsys):
    from phenovec.cli import main

    target = tmp_path / "PWNED"
    src = tmp_path / "wells.parquet"
    profiles().to_parquet(src)
    for i, text in enumerate(payloads(target)[:6] + payloads(target)[20:24]):
        recipe = tmp_path / f"r{i}.yaml"
        step = "spherize" if i % 2 else "normalize"
        recipe.write_text(yaml.safe_dump({"steps": [{"feature_select": {"operation": "variance_threshold"}},
                                                    {step: {"samples": text}}]}))
        out = tmp_path / f"o{i}.parquet"
        assert main(["process", "run", str(recipe), str(src), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert "samples" in err, err
        assert not target.exists() and not out.exists(), text
    # the CLI option --samples too
    assert main(["process", "normalize", str(src), "-o", str(tmp_path / "n.parquet"),
                 "--samples", payloads(target)[0]]) == 2
    assert "samples" in capsys.readouterr().err
    assert not target.exists()
    # and the accepted spelling still runs
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"steps": [{"normalize": {"samples": "Metadata_broad_sample == 'DMSO'"}}]}))
    assert main(["process", "run", str(good), str(src), "-o", str(tmp_path / "good.parquet")]) == 0
    assert (tmp_path / "good.parquet").exists()


def test_run_configuration_with_an_injected_samples_or_control_is_refused(tmp_path):
    """``phenovec run``: the process steps go to apply_recipe and report.control to build_report (as
    pipeline.run does); report.treatment_column builds the default spherize filter."""
    from phenovec.pipeline import default_steps, load_run_config
    from phenovec.process.recipe import apply_recipe
    from phenovec.report import build_report

    target = tmp_path / "PWNED"
    run = f"__import__('os').system('touch {target}')"
    wells = profiles().rename(columns={"Metadata_broad_sample": "Metadata_Treatment"})
    wells["Metadata_MOA"] = wells["Metadata_Treatment"].map({"DMSO": "none", "cpd_a": "m1", "cpd_b": "m1",
                                                               "cpd_c": "m2"})
    for text in payloads(target)[:8]:
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "synth": {"plates": 1},
                                        "process": {"steps": [{"spherize": {"samples": text}}]},
                                        "report": {"control": text}}))
        with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: process.steps: recipe step 1 \(spherize\) "
                                             "samples"):
            load_run_config(path)  # refused when the configuration is read, before any stage
        with pytest.raises(ValueError, match="samples"):
            apply_recipe({"name": "pipeline", "steps": [{"spherize": {"samples": text}}]}, wells, progress=False,
                         features_default="non-metadata")
        path.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "synth": {"plates": 1},
                                        "report": {"control": text}}))
        cfg = load_run_config(path)
        with pytest.raises(ValueError, match="^control_query: "):
            build_report(wells, tmp_path / "rep", control_query=cfg["report"]["control"], null_size=60)
        assert not target.exists(), text
    assert not (tmp_path / "rep").exists() or not any((tmp_path / "rep").iterdir())
    steps = default_steps(f"{run} or Metadata_Treatment == 'DMSO'")
    with pytest.raises(ValueError, match="samples"):
        apply_recipe({"name": "pipeline", "steps": steps}, wells, progress=False, features_default="non-metadata")
    assert not target.exists()


def test_report_control_keeps_its_forms():
    from phenovec.report.inputs import load_input

    wells = profiles().rename(columns={"Metadata_broad_sample": "Metadata_Treatment"})
    wells["Metadata_MOA"] = "m"
    wells.loc[wells.index % 4 == 0, "Metadata_Treatment"] = "DMSO (0.1%)"  # a value that is no valid filter
    wells["Metadata_Control"] = wells["Metadata_Treatment"] == "DMSO (0.1%)"
    kw = dict(moa_column="Metadata_MOA", treatment_column="Metadata_Treatment", plate_column="Metadata_Plate")
    want = (wells["Metadata_Treatment"] == "DMSO (0.1%)").to_numpy()
    for control, rule in (("Metadata_Control == True", "query"), ("Metadata_Control", "query"),
                          ("Metadata_Treatment == 'DMSO (0.1%)'", "query"), ("DMSO (0.1%)", "treatment")):
        inp = load_input(wells, control_query=control, **kw)
        np.testing.assert_array_equal(inp.control, want)
        assert inp.control_rule == rule
    with pytest.raises(ValueError, match=r"^<DataFrame>: report.control in r.yaml 'Vehicle' selects no control"):
        load_input(wells, control_query="Vehicle", control_key="report.control in r.yaml", **kw)
    with pytest.raises(ValueError, match=r"^report.control in r.yaml 'Metadata_Ctl == 1' cannot be evaluated.*"
                                         r"did you mean 'Metadata_Control'"):
        load_input(wells, control_query="Metadata_Ctl == 1", control_key="report.control in r.yaml", **kw)
    with pytest.raises(ValueError, match=r"^report.control in r.yaml: '@'"):
        load_input(wells, control_query="@pd.x == 1", control_key="report.control in r.yaml", **kw)
