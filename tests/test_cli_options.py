"""One vocabulary across every subcommand of ``build_parser()``: every option has help and shows its default,
outputs are ``-o/--out``, ``--quiet`` everywhere, one similarity option, ``-column`` column options; the old
spellings still parse (hidden from ``--help``); progress bars only on a terminal and never with ``--quiet``."""
import argparse
import subprocess
import sys

import pytest

from phenovec.cli import build_parser
from phenovec.cli_options import show_progress

OLD_SPELLINGS = {"--output", "--no-progress", "--distance", "--similarity-metric", "--meta", "--moa-col",
                 "--compound-col", "--multilabel-col", "--profile-col", "--replicate-group-col"}


def _leaves(parser: argparse.ArgumentParser, path=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
    for sub in subs:
        for name, child in sub.choices.items():
            yield from _leaves(child, (*path, name))


LEAVES = dict(_leaves(build_parser()))


def _visible(action: argparse.Action) -> list[str]:
    hidden = set(getattr(action, "old_spellings", ()))
    return [s for s in action.option_strings if s not in hidden]


def _problems(parser: argparse.ArgumentParser) -> list[str]:
    """Every way ``parser`` breaks the vocabulary (empty when it keeps it)."""
    bad = []
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    shown = [a for a in actions if a.help != argparse.SUPPRESS]
    for a in actions:
        name = "/".join(a.option_strings) or a.dest
        if a.help == argparse.SUPPRESS:  # a separate hidden alias: another, visible option sets the same value
            if not any(b.dest == a.dest for b in shown):
                bad.append(f"{name}: hidden, and no visible option sets {a.dest!r}")
            continue
        if not (a.help or "").strip():
            bad.append(f"{name}: no help")
        for s in _visible(a):
            if s in OLD_SPELLINGS or s.endswith("-col"):
                bad.append(f"{name}: old spelling {s} shown in --help")
        if a.dest in ("out", "output") and _visible(a) != ["-o", "--out"]:
            bad.append(f"{name}: the output option must be -o/--out")
        if a.default not in (None, False, argparse.SUPPRESS) and a.option_strings:
            text = parser._get_formatter()._expand_help(a)
            if "default" not in text.lower():
                bad.append(f"{name}: help does not show the default {a.default!r}")
    # every command that does work has --quiet (those that only print, such as a listing, need not)
    works = any(a.dest in ("out", "output") for a in actions) or parser.prog.split()[1] in ("train", "run")
    if works and not any("--quiet" in _visible(a) for a in shown):
        bad.append("no --quiet")
    return bad


def test_the_walk_sees_every_stage():
    stages = {name.split()[0] for name in LEAVES}
    assert stages >= {"evaluate", "process", "synth", "illum", "crop", "tiles", "train", "export", "profile",
                      "report", "run", "demo"}
    evaluate = {n.split()[1] for n in LEAVES if n.startswith("evaluate ")}
    assert evaluate >= {"map", "enrichment", "knn", "grit", "mp-value", "moa-similarity-delta", "three-group-pcc",
                        "class-latent-assignment", "holdout-moa-identification", "batch-diagnostic", "assays",
                        "compare-assays", "probe", "suite", "integration"}, evaluate


@pytest.mark.parametrize("name", list(LEAVES))
def test_every_subcommand_keeps_the_vocabulary(name):
    assert _problems(LEAVES[name]) == []


def test_the_check_finds_a_broken_subcommand():
    p = argparse.ArgumentParser(prog="phenovec bad crop")
    p.add_argument("--output", required=True)
    p.add_argument("--moa-col", default="x", help="column")
    assert len(_problems(p)) >= 4  # no help, --output, --moa-col, default not shown, no --quiet


def _parse(argv):
    return build_parser().parse_args(argv)


@pytest.mark.parametrize("old, new, expect", [
    (["evaluate", "map", "t.csv", "--out", "x.csv", "--distance", "correlation", "--meta", "Metadata_a",
      "--multilabel-col", "Metadata_m"],
     ["evaluate", "map", "t.csv", "-o", "x.csv", "--similarity", "pearson", "--meta-features", "Metadata_a",
      "--multilabel-column", "Metadata_m"],
     {"out": "x.csv", "similarity": "pearson", "meta_features": ["Metadata_a"], "multilabel_column": "Metadata_m"}),
    (["evaluate", "enrichment", "t.csv", "--replicate-groups", "g", "--similarity-metric", "cosine", "--out", "x"],
     ["evaluate", "enrichment", "t.csv", "--replicate-groups", "g", "--similarity", "cosine", "-o", "x"],
     {"similarity": "cosine", "out": "x"}),
    (["evaluate", "knn", "t.csv", "--moa-col", "m", "--compound-col", "c", "--out", "x",
      "--similarity-metric", "euclidean"],
     ["evaluate", "knn", "t.csv", "--moa-column", "m", "--compound-column", "c", "-o", "x",
      "--similarity", "euclidean"],
     {"moa_column": "m", "compound_column": "c", "similarity": "euclidean"}),
    (["evaluate", "grit", "t.csv", "--control-perts", "D", "--profile-col", "p", "--replicate-group-col", "g",
      "--out", "x"],
     ["evaluate", "grit", "t.csv", "--control-perts", "D", "--profile-column", "p", "--replicate-group-column", "g",
      "-o", "x"],
     {"profile_column": "p", "replicate_group_column": "g"}),
    (["profile", "m.onnx", "--index", "i.csv", "--out", "o", "--no-progress"],
     ["profile", "m.onnx", "--index", "i.csv", "-o", "o", "--quiet"], {"out": "o", "quiet": True}),
    (["synth", "--out", "d"], ["synth", "-o", "d"], {"out": "d"}),
    (["report", "w.csv", "--out", "r"], ["report", "w.csv", "-o", "r"], {"out": "r", "similarity": "cosine"}),
    (["demo", "--out", "d"], ["demo", "-o", "d"], {"out": "d"}),
])
def test_old_spellings_still_parse_to_the_same_values(old, new, expect):
    a, b = _parse(old), _parse(new)
    assert vars(a) == vars(b)
    assert {k: getattr(a, k) for k in expect} == expect


@pytest.mark.parametrize("argv", [["process", "normalize", "in.csv", "--output", "o.csv"],
                                  ["process", "run", "r.yaml", "in.csv", "--output", "o.csv"]])
def test_process_old_output_spelling_still_parses(argv):
    a = _parse(argv)
    assert getattr(a, "out", None) == "o.csv" or getattr(a, "output", None) == "o.csv"


def test_old_spellings_are_hidden_from_help():
    for name, parser in LEAVES.items():
        text = parser.format_help()
        for s in OLD_SPELLINGS:
            assert f"{s} " not in text and f"{s}," not in text and not text.rstrip().endswith(s), (name, s)


def test_map_reads_correlation_as_pearson_and_refuses_unknown_similarities(capsys):
    assert _parse(["evaluate", "map", "t", "-o", "x", "--similarity", "correlation"]).similarity == "pearson"
    with pytest.raises(SystemExit):
        _parse(["evaluate", "map", "t", "-o", "x", "--similarity", "manhattan"])
    assert "invalid choice" in capsys.readouterr().err


def test_progress_only_on_a_terminal_and_never_with_quiet(monkeypatch):
    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.setattr(sys, "stderr", Stream(True))
    assert show_progress(argparse.Namespace(quiet=False))
    assert not show_progress(argparse.Namespace(quiet=True))
    monkeypatch.setattr(sys, "stderr", Stream(False))
    assert not show_progress(argparse.Namespace(quiet=False))


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path):
    r = subprocess.run([sys.executable, "-m", "phenovec.cli", "synth", "-o", str(tmp_path / "plate"), "--wells", "2",
                        "--sites", "1", "--size", "64", "--cells", "2", "3"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "plate" / "index.csv").exists()
    assert "%|" not in r.stderr and "it/s" not in r.stderr, r.stderr
