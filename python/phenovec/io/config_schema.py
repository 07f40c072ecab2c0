"""Sectioned configuration schemas (YAML / dict) checked key by key, with errors that name the key path.

A schema maps ``section -> key -> (default, allowed types, check)``; ``check`` is ``None``, a ``(low, high)``
range, a tuple of allowed strings, or ``"path"`` (checked by the caller, which knows the base folder).
``merge_sections`` merges a raw mapping over the defaults: unknown sections and keys (with the closest valid
name suggested), wrong types (a boolean is never taken for a number) and out-of-range or unlisted values raise
``ConfigError`` naming ``section.key`` and the source file. Used by ``phenovec train`` and ``phenovec run``.
"""
from __future__ import annotations

import copy
import difflib
from typing import Any

NONE_TYPE = type(None)
Schema = dict[str, dict[str, tuple[Any, tuple, Any]]]


class ConfigError(ValueError):
    """An invalid configuration; the message names the key path and the source file."""


def suggest(name: str, valid) -> str:
    """`` (did you mean 'x'?)`` or `` (valid: a, b, c)``."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(map(str, valid))})"


def _type_name(types: tuple) -> str:
    return " or ".join("null" if t is NONE_TYPE else t.__name__ for t in types)


def defaults(schema: Schema) -> dict:
    return {sec: {k: copy.deepcopy(v[0]) for k, v in keys.items()} for sec, keys in schema.items()}


def check_value(where: str, value, types: tuple, check, source: str) -> None:
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(f"{source}: {where} must be {_type_name(types)}, got a boolean ({value!r})")
    if not isinstance(value, types):
        raise ConfigError(f"{source}: {where} must be {_type_name(types)}, got {type(value).__name__} ({value!r})")
    if isinstance(check, tuple) and value is not None:
        if all(isinstance(c, str) for c in check):
            for v in value if isinstance(value, list) else [value]:
                if v not in check:
                    raise ConfigError(f"{source}: {where} = {v!r} is not one of {', '.join(check)}")
        elif not (check[0] <= value <= check[1]):
            raise ConfigError(f"{source}: {where} = {value!r} is outside [{check[0]}, {check[1]}]")


def merge_sections(raw, schema: Schema, source: str, sections: tuple[str, ...] | None = None) -> dict:
    """Defaults of ``schema`` with ``raw`` merged over them, every key checked (see the module docstring).
    ``sections`` limits which of ``raw``'s top-level keys are schema sections (others are left to the caller)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping of sections, got {type(raw).__name__}")
    cfg = defaults(schema)
    for sec, body in raw.items():
        if sections is not None and sec not in sections:
            continue
        if sec not in schema:
            raise ConfigError(f"{source}: unknown section {sec!r}{suggest(str(sec), schema)}")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: section {sec!r} must be a mapping, got {type(body).__name__}")
        for key, value in body.items():
            where = f"{sec}.{key}"
            if key not in schema[sec]:
                raise ConfigError(f"{source}: unknown key {where!r}{suggest(str(key), schema[sec])}")
            _, types, check = schema[sec][key]
            check_value(where, value, types, check, source)
            cfg[sec][key] = copy.deepcopy(value)
    return cfg


def read_config_source(path_or_dict, overrides: dict | None = None):
    """(raw mapping, source name for errors, base folder or None) of a YAML file or a dict, with ``overrides``
    (``{"train.epochs": 3}``, from ``--set section.key=value``) applied; errors name the file or override."""
    from pathlib import Path

    import yaml

    from phenovec.io.yaml_load import load_yaml

    if isinstance(path_or_dict, dict):
        raw, source, base = copy.deepcopy(path_or_dict), "<config>", None
    else:
        path = Path(path_or_dict)
        if not path.is_file():
            raise ConfigError(f"training configuration {path} does not exist")
        try:
            raw = load_yaml(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        source, base = str(path), path.parent
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping of sections, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        sec, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"override {dotted!r}: use section.key=value")
        if raw.get(sec) is None:
            raw[sec] = {}
        if not isinstance(raw[sec], dict):
            raise ConfigError(f"{source}: section {sec!r} must be a mapping, got {type(raw[sec]).__name__}")
        raw[sec][key] = value
    return raw, source, base
