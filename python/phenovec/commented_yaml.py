"""A configuration as YAML with a comment on every key: what ``phenovec run --print-config`` and
``phenovec train --print-config`` print.

    print(commented_yaml(config, {"out": "output folder", "crop": "single-cell crops", "crop.box_size": ...}))

``comments`` maps each dotted key path (a section too) to its comment; a key without one is an error, so a new
configuration key cannot be printed undocumented. Values are written in YAML flow style (``[DNA, ER]``,
``null``; a string that looks like an exponent number, "1e5", quoted), so :func:`phenovec.io.yaml_load.load_yaml`
(or ``yaml.safe_load``) of the text gives the configuration back.
"""
from __future__ import annotations

import yaml

from phenovec.io.yaml_load import ExponentSafeDumper

COMMENT_COLUMN = 36


def inline_yaml(value) -> str:
    text = yaml.dump(value, Dumper=ExponentSafeDumper, default_flow_style=True, width=1 << 30,
                     sort_keys=False).strip()
    return text[:-3].rstrip() if text.endswith("\n...") else text


def commented_yaml(config: dict, comments: dict[str, str], _prefix: str = "", _indent: int = 0) -> str:
    """``config`` as block YAML, each key followed by ``# comments[dotted.path]``."""
    lines = []
    for key, value in config.items():
        path = f"{_prefix}{key}"
        if path not in comments:
            raise KeyError(f"no comment for configuration key {path!r}")
        head = " " * _indent + f"{key}:"
        nested = isinstance(value, dict) and value
        if not nested:
            head += f" {inline_yaml(value)}"
        lines.append(f"{head.ljust(COMMENT_COLUMN - 1)} # {comments[path]}")
        if nested:
            lines.append(commented_yaml(value, comments, f"{path}.", _indent + 2))
    return "\n".join(lines)
