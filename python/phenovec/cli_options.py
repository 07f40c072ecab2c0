"""The option vocabulary every ``phenovec`` subcommand shares, and the help format that shows each default.

- output: ``-o/--out`` (``add_out``); older spellings (``--output``) still parse but are hidden from ``--help``;
- ``--quiet`` (``add_quiet``): no progress bars; bars are also off when stderr is not a terminal
  (``show_progress``);
- ``--similarity`` (``add_similarity``): cosine / pearson / spearman / euclidean (``correlation`` is read as
  pearson; ``--distance`` and ``--similarity-metric`` are hidden old spellings);
- column options end in ``-column`` (``--moa-column``, ``--compound-column``); ``--meta-features``.

An old spelling is an extra option string of the same argument (``option(p, "--moa-column", old=["--moa-col"])``),
so it sets the same value and a required option given by its old name is still present; ``HelpFormatter`` leaves
the old strings out of ``--help``.
"""
from __future__ import annotations

import argparse
import sys

SIMILARITIES = ("cosine", "pearson", "spearman", "euclidean")


class HelpFormatter(argparse.HelpFormatter):
    """Help that shows every option's default (unless the help text already says it) and hides old spellings."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (text == argparse.SUPPRESS or "default" in text.lower() or default is None or default is False
                or default == argparse.SUPPRESS or isinstance(action, (argparse._VersionAction, argparse._HelpAction))
                or (not action.option_strings and action.nargs not in ("?", "*"))):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%') or repr(shown)})"

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = getattr(action, "old_spellings", ())
        if not hidden:
            return super()._format_action_invocation(action)
        shown = argparse.Action(option_strings=[s for s in action.option_strings if s not in hidden],
                                dest=action.dest, nargs=action.nargs, metavar=action.metavar,
                                choices=action.choices)
        return super()._format_action_invocation(shown)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``HelpFormatter``; its subparsers are ``Parser`` too."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def option(p: argparse.ArgumentParser, *flags: str, old=(), **kwargs) -> argparse.Action:
    """``p.add_argument(*flags, **kwargs)`` also accepting the hidden old spellings ``old``."""
    action = p.add_argument(*flags, *old, **kwargs)
    action.old_spellings = tuple(old)
    return action


def add_out(p: argparse.ArgumentParser, help: str, required: bool = True, old=(), **kwargs) -> argparse.Action:
    """The output option ``-o/--out`` (``args.out``)."""
    return option(p, "-o", "--out", old=old, dest="out", required=required, help=help, **kwargs)


def add_quiet(p: argparse.ArgumentParser, old=()) -> argparse.Action:
    """``--quiet`` (``args.quiet``): no progress bars."""
    return option(p, "--quiet", old=old, dest="quiet", action="store_true",
                  help="no progress bars (they are also off when stderr is not a terminal)")


def show_progress(args) -> bool:
    """Whether a command draws progress bars: not with ``--quiet``, and only on a terminal."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _similarity(text: str) -> str:
    return "pearson" if text == "correlation" else text


def add_similarity(p: argparse.ArgumentParser, default: str, help: str = "similarity between profiles") -> None:
    """``--similarity`` (``args.similarity``); ``correlation`` means pearson."""
    option(p, "--similarity", old=("--distance", "--similarity-metric"), dest="similarity", type=_similarity,
           default=default, choices=SIMILARITIES, help=f"{help} (correlation = pearson)")
