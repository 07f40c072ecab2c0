"""DeepProfiler feature files (``.npz``, one per site) as profile tables, without unpickling anything.

DeepProfiler's ``profile`` writes ``features/PLATE/WELL_SITE.npz`` with ``features`` (cells x D float32), often
``locations`` (cells x 2, x / y in pixels) and ``metadata``: a dict (the index row of the site plus
``Metadata_Model``) saved as a 0-d *object* array, i.e. a pickle. pycytominer 1.7.1 (``load_npz_features``) reads
it with ``np.load(allow_pickle=True)``, which runs whatever the pickle says. phenovec never does: numeric arrays are
read with ``allow_pickle=False`` and the ``metadata`` pickle is *parsed* by :func:`parse_pickled_dict`, a data-only
reader of the opcode stream (``pickletools.genops``) that builds dicts / lists / tuples / str / bytes / int / float /
bool / None and recognises numpy's array reconstruction by name only; it imports nothing and calls nothing. Any
other construct (another global, an object with ``__reduce__``, a persistent id, ...) is refused with an error
naming the file. Files without ``metadata`` are read too.

:func:`read_deepprofiler_npz` gives pycytominer's table (``load_npz_features``, ``metadata=True``): the metadata
dict as string columns (``Metadata_`` prepended where missing), one row per cell, then the features named
``{Metadata_Model}_{i}`` (``{fallback_feature_prefix}_{i}`` when the dict has no ``Metadata_Model``).
:func:`read_deepprofiler_dir` concatenates every ``.npz`` under a folder in sorted path order. Both record the
feature names in ``DataFrame.attrs`` (:data:`phenovec.io.profiles.FEATURES_ATTR`), so readers of profiles know
which columns are features.
"""
from __future__ import annotations

import io
import os
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

_ARRAY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_NDARRAY = {("numpy", "ndarray")}
_DTYPE = {("numpy", "dtype")}
_MAX_PICKLE_BYTES = 16 << 20
_SCALARS = (str, int, float, bool, type(None))


class _Global:
    def __init__(self, module: str, name: str):
        self.key = (module, name)


class _Built:
    """An object the pickle asks numpy to build: an ndarray or a dtype, kept as data."""

    def __init__(self, kind: str, args: tuple):
        self.kind, self.args, self.state = kind, args, None


def parse_pickled_dict(data: bytes, where: str) -> dict:
    """The dict inside a pickled 0-d object ndarray (what ``np.save`` writes for a dict), parsed as data.

    ``ValueError`` naming ``where`` for anything but str keys mapping to str / int / float / bool / None values
    inside a 0-d object array, or for any opcode outside the data-only subset."""
    if len(data) > _MAX_PICKLE_BYTES:
        raise ValueError(f"{where}: the pickled metadata is {len(data)} bytes (more than {_MAX_PICKLE_BYTES})")
    stack: list = []
    marks: list[int] = []
    memo: dict = {}

    def pop_mark() -> list:
        if not marks:
            raise ValueError(f"{where}: malformed pickle (no MARK)")
        k = marks.pop()
        items = stack[k:]
        del stack[k:]
        return items

    def refuse(what: str):
        raise ValueError(f"{where}: the metadata pickle holds {what}; phenovec reads only plain data "
                         "(it never unpickles user files). Re-save the metadata as JSON or strings, or drop it")

    result = None
    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                result = stack.pop()
                break
            if name == "MARK":
                marks.append(len(stack))
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo[arg])
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "GLOBAL":
                    module, _, attr = str(arg).partition(" ")
                else:
                    attr, module = stack.pop(), stack.pop()
                if (module, attr) not in _ARRAY_GLOBALS | _NDARRAY | _DTYPE:
                    refuse(f"a reference to {module}.{attr}")
                stack.append(_Global(module, attr))
            elif name in ("BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4", "BINFLOAT", "FLOAT",
                          "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINBYTES",
                          "BINBYTES", "BINBYTES8", "SHORT_BINSTRING", "BINSTRING", "STRING"):
                stack.append(arg)
            elif name == "NONE":
                stack.append(None)
            elif name == "NEWTRUE":
                stack.append(True)
            elif name == "NEWFALSE":
                stack.append(False)
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                k = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}[name]
                items = tuple(stack[-k:])
                del stack[-k:]
                stack.append(items)
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "LIST":
                stack.append(pop_mark())
            elif name == "APPEND":
                v = stack.pop()
                stack[-1].append(v)
            elif name == "APPENDS":
                items = pop_mark()
                stack[-1].extend(items)
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "DICT":
                items = pop_mark()
                stack.append(dict(zip(items[::2], items[1::2])))
            elif name == "SETITEM":
                v, k = stack.pop(), stack.pop()
                stack[-1][k] = v
            elif name == "SETITEMS":
                items = pop_mark()
                stack[-1].update(zip(items[::2], items[1::2]))
            elif name == "REDUCE":
                args, func = stack.pop(), stack.pop()
                if not isinstance(func, _Global) or not isinstance(args, tuple):
                    refuse("a call of something other than numpy's array reconstruction")
                if func.key in _ARRAY_GLOBALS:
                    stack.append(_Built("array", args))
                elif func.key in _DTYPE:
                    stack.append(_Built("dtype", args))
                else:
                    refuse(f"a call of {'.'.join(func.key)}")
            elif name == "BUILD":
                state = stack.pop()
                if not isinstance(stack[-1], _Built):
                    refuse("an object state other than a numpy array's or dtype's")
                stack[-1].state = state
            else:
                refuse(f"the pickle opcode {name}")
    except ValueError:
        raise
    except Exception as e:  # truncated stream, bad memo reference, unhashable key, ...
        raise ValueError(f"{where}: malformed metadata pickle ({type(e).__name__}: {e})") from None
    if not isinstance(result, _Built) or result.kind != "array" or not isinstance(result.state, tuple):
        raise ValueError(f"{where}: the metadata is not a pickled numpy object array")
    state = result.state  # (version, shape, dtype, is_fortran, data)
    if len(state) != 5 or state[1] != () or not isinstance(state[4], list) or len(state[4]) != 1:
        raise ValueError(f"{where}: the metadata is not a 0-d object array holding one dict")
    obj = state[4][0]
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: the metadata holds a {type(obj).__name__}, expected a dict")
    for k, v in obj.items():
        if not isinstance(k, str):
            raise ValueError(f"{where}: metadata key {k!r} is not a string")
        if not isinstance(v, _SCALARS):
            raise ValueError(f"{where}: metadata value of {k!r} is not a plain value ({type(v).__name__})")
    return obj


def _read_member(z: zipfile.ZipFile, member: str, where: str):
    """One ``.npy`` member: a numeric array (``allow_pickle=False``) or, for an object array, the parsed dict."""
    with z.open(member) as f:
        raw = f.read()
    fp = io.BytesIO(raw)
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fp) if version[0] >= 2 else (None, None, None)
    if dtype is not None and dtype.hasobject:
        return parse_pickled_dict(fp.read(), f"{where}[{member[:-4]}]")
    return np.load(io.BytesIO(raw), allow_pickle=False)


def read_deepprofiler_npz(path: str | os.PathLike, fallback_feature_prefix: str = "DP", metadata: bool = True,
                          locations: bool = False) -> pd.DataFrame:
    """One DeepProfiler ``.npz`` as pycytominer's ``load_npz_features`` table (see the module docstring).

    ``locations=True`` adds ``Location_Center_X`` / ``Location_Center_Y`` (pycytominer's ``load_npz_locations``
    names, columns 0 and 1 of ``locations``) after the metadata; they are not features."""
    from phenovec.io.profiles import declare_features

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"DeepProfiler feature file not found: {p}")
    try:
        z = zipfile.ZipFile(p)
    except zipfile.BadZipFile:
        raise ValueError(f"{p}: not a numpy .npz archive (not a zip file)") from None
    with z:
        members = {n[:-4]: n for n in z.namelist() if n.endswith(".npy")}
        if "features" not in members:
            raise ValueError(f"{p}: not a DeepProfiler feature file (no 'features' array; has {sorted(members)})")
        feats = _read_member(z, members["features"], str(p))
        if not isinstance(feats, np.ndarray) or feats.ndim != 2 or not np.issubdtype(feats.dtype, np.number):
            raise ValueError(f"{p}: 'features' must be a 2-D numeric array, got "
                             f"{getattr(feats, 'shape', type(feats).__name__)} {getattr(feats, 'dtype', '')}")
        meta = _read_member(z, members["metadata"], str(p)) if metadata and "metadata" in members else None
        if meta is not None and not isinstance(meta, dict):
            raise ValueError(f"{p}: 'metadata' must be a pickled dict, got an array of shape {meta.shape}")
        loc = _read_member(z, members["locations"], str(p)) if locations and "locations" in members else None
    n = feats.shape[0]
    prefix = fallback_feature_prefix
    parts = []
    if meta is not None:
        mdf = pd.DataFrame(meta, index=range(n), dtype=str)
        mdf.columns = pd.Index([c if c.startswith("Metadata_") else f"Metadata_{c}" for c in mdf.columns])
        if "Metadata_Model" in mdf.columns and n:
            prefix = str(mdf["Metadata_Model"].iloc[0])
        parts.append(mdf)
    if locations:
        if loc is None:
            raise ValueError(f"{p}: no 'locations' array")
        if not isinstance(loc, np.ndarray) or loc.ndim != 2 or loc.shape[0] != n or loc.shape[1] < 2:
            raise ValueError(f"{p}: 'locations' must be {n} x 2 (or more), got {getattr(loc, 'shape', None)}")
        parts.append(pd.DataFrame({"Location_Center_X": loc[:, 0], "Location_Center_Y": loc[:, 1]}))
    names = [f"{prefix}_{i}" for i in range(feats.shape[1])]
    parts.append(pd.DataFrame(feats, columns=names))
    df = pd.concat(parts, axis=1) if len(parts) > 1 else parts[0]
    return declare_features(df, names)


def read_deepprofiler_dir(path: str | os.PathLike, fallback_feature_prefix: str = "DP", metadata: bool = True,
                          locations: bool = False) -> pd.DataFrame:
    """Every ``.npz`` under ``path`` (recursively, sorted by relative path) as one table; the files must have the
    same columns (``ValueError`` naming the first file that differs)."""
    from phenovec.io.profiles import declare_features

    p = Path(path)
    files = sorted(p.rglob("*.npz"))
    if not files:
        raise ValueError(f"{p}: no DeepProfiler .npz feature files in this folder")
    from phenovec.io.profiles import FEATURES_ATTR

    tables = []
    for f in files:
        t = read_deepprofiler_npz(f, fallback_feature_prefix, metadata, locations)
        if tables and list(t.columns) != list(tables[0].columns):
            raise ValueError(f"{f}: its columns differ from {files[0]}'s "
                             f"({t.shape[1]} vs {tables[0].shape[1]}; same metadata keys and feature count needed)")
        tables.append(t)
    return declare_features(pd.concat(tables, ignore_index=True), tables[0].attrs[FEATURES_ATTR])
