"""Row filters: the small expression language of every filter string phenovec accepts (a recipe's or
``phenovec run`` configuration's ``samples``, a report's ``control``, ``--query`` / ``--reference``).

A filter is parsed with :func:`ast.parse` and checked against a whitelist before any data is touched; it is
then evaluated on the columns it names with pandas' own element-wise operators, so the rows it selects are
those ``DataFrame.query`` selects for the same string. Nothing in it is ever executed as Python code. Accepted:

- column names: identifiers (``Metadata_Plate``) or pandas' backtick-quoted names (```Metadata Plate```);
  as in pandas, a name that is no column may be ``index`` or the name of an index level;
- literals: strings, integers, floats (``-`` / ``+`` on numbers), ``True``, ``False``, ``None``;
- comparisons ``== != < <= > >=``, chained too (``1 < x <= 3``), column vs literal and column vs column;
- ``col in [...]`` / ``col not in [...]`` (and ``col == [...]`` / ``col != [...]``, as in pandas) with a list
  or tuple of literals;
- ``and`` / ``or`` / ``not`` and pandas' ``&`` / ``|`` / ``~``, parentheses (``&`` / ``|`` bind as ``and`` /
  ``or``, as in pandas: ``a == 1 & b == 2`` is ``(a == 1) & (b == 2)``);
- ``col.isna()`` / ``col.notna()`` / ``col.isnull()`` / ``col.notnull()``, and a boolean column on its own.

Missing values behave as in ``DataFrame.query``: ``NaN == x`` is False, ``NaN != x`` is True, ``NaN < x`` is
False, also in pandas' nullable ``string`` columns compared with a literal; a missing value of any other nullable
result (``Int64``, ``boolean``, two string columns) selects no row. Anything else (attribute access, ``@``
variables, other calls, subscripts, lambdas, comprehensions, f-strings, ``:=``, dunder names, arithmetic, ...)
raises ``ValueError`` naming the key the string came from and the offending piece, at parse time.
"""
from __future__ import annotations

import ast
import difflib
from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

MAX_LENGTH = 10_000  # characters of one filter string
MAX_DEPTH = 64  # nesting of the parsed expression (a flat chain of & / | / and / or counts once)

_METHODS = {"isna": True, "isnull": True, "notna": False, "notnull": False}  # name -> selects missing values
_COMPARE = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_CALLS = "calls other than col.isna() / col.notna() / col.isnull() / col.notnull() are not allowed"
_SHOWN = 60  # characters of an offending piece quoted in an error


class FilterColumnError(KeyError, ValueError):
    """A filter names a column the table lacks (a ``KeyError`` and a ``ValueError``; the message reads plainly)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------------------------------------------
# the checked expression tree
# --------------------------------------------------------------------------------------------------------------
# node types of the checked tree (the parser builds only these)
_Col = namedtuple("_Col", "name")
_Lit = namedtuple("_Lit", "value")
_Cmp = namedtuple("_Cmp", "op left right")  # op: one of _COMPARE's values; left / right: _Col | _Lit
_IsIn = namedtuple("_IsIn", "col values negate")  # col: _Col; values: tuple of literals
_IsNa = namedtuple("_IsNa", "col missing")  # missing: True for isna / isnull, False for notna / notnull
_Bool = namedtuple("_Bool", "col")  # a boolean column on its own
_Not = namedtuple("_Not", "operand")
_Logic = namedtuple("_Logic", "op operands")  # op: "and" | "or"


@dataclass(frozen=True)
class RowFilter:
    """A parsed, checked filter (see the module docstring); build it with :func:`parse_filter`."""

    text: str
    key: str
    columns: tuple[str, ...]
    _tree: Any = field(repr=False, compare=False)

    def mask(self, df: pd.DataFrame) -> np.ndarray:
        """One bool per row of ``df``: the rows the filter selects (as ``df.query(text)`` would).

        A column the filter names that ``df`` lacks raises :class:`FilterColumnError` (a ``KeyError`` and a
        ``ValueError``) naming the key, the column and some of the available ones; values that cannot be
        compared (``'a' < 3``) or a non-boolean column used as a condition raise ``ValueError`` naming the key.
        """
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"{self.key}: a filter is evaluated on a DataFrame, got {type(df).__name__}")
        values = {c: self._column(df, c) for c in self.columns}
        out = self._eval(self._tree, values)
        if isinstance(out.dtype, pd.BooleanDtype):
            out = out.fillna(False)
        return np.asarray(out.to_numpy(dtype=bool), dtype=bool)

    def _column(self, df: pd.DataFrame, c: str) -> pd.Series:
        """A named column, else (as in ``DataFrame.query``) ``index`` or an index level's name."""
        if c in df.columns:
            s = df[c]
            if isinstance(s, pd.DataFrame):
                raise ValueError(f"{self.key}: column {c!r} occurs more than once in the table")
            return s
        if c == "index":
            return pd.Series(df.index.to_numpy(), index=df.index)
        if c in [n for n in df.index.names if n is not None]:
            return pd.Series(df.index.get_level_values(c).to_numpy(), index=df.index)
        raise FilterColumnError(f"{self.key}: filter {_short(self.text)!r} names column {c!r}, which the "
                                f"table does not have ({_available(df, c)})")

    # evaluation with pandas' element-wise operators (the same ones DataFrame.query uses)
    def _eval(self, node, cols: dict) -> pd.Series:
        if isinstance(node, _Cmp):
            left, right = self._value(node.left, cols), self._value(node.right, cols)
            literal = node.left if isinstance(node.left, _Lit) else node.right if isinstance(node.right, _Lit) else None
            if literal is not None and isinstance(literal.value, str) and not (isinstance(node.left, _Lit)
                                                                              and isinstance(node.right, _Lit)):
                left, right = _as_query_compares(left), _as_query_compares(right)
            try:
                res = _apply_compare(node.op, left, right)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{self.key}: cannot evaluate {_describe(node.left)} {node.op} "
                                 f"{_describe(node.right)} in filter {_short(self.text)!r} ({e})") from None
            return res
        if isinstance(node, _IsIn):
            res = cols[node.col.name].isin(list(node.values))
            return ~res if node.negate else res
        if isinstance(node, _IsNa):
            s = cols[node.col.name]
            return s.isna() if node.missing else s.notna()
        if isinstance(node, _Bool):
            s = cols[node.col.name]
            if not (s.dtype == bool or isinstance(s.dtype, pd.BooleanDtype)):
                raise ValueError(f"{self.key}: column {node.col.name!r} (dtype {s.dtype}) is used as a condition "
                                 f"in filter {_short(self.text)!r} but is not boolean; compare it "
                                 f"(e.g. {node.col.name} == 1)")
            return s
        if isinstance(node, _Not):
            return ~self._eval(node.operand, cols)
        if isinstance(node, _Logic):
            acc = self._eval(node.operands[0], cols)
            for o in node.operands[1:]:
                nxt = self._eval(o, cols)
                acc = (acc & nxt) if node.op == "and" else (acc | nxt)
            return acc
        raise AssertionError(f"unexpected filter node {node!r}")  # pragma: no cover (the parser builds only these)

    @staticmethod
    def _value(node, cols: dict):
        return cols[node.name] if isinstance(node, _Col) else node.value


def _as_query_compares(v):
    """A pandas ``string`` column as ``DataFrame.query`` compares it with a string literal: as an object column (a
    missing value ``!= 'x'`` is True); the column's own operators give <NA>, which selected no row. (Against a
    number, None or another column, query keeps the string operators, and so does this.)"""
    if isinstance(v, pd.Series) and isinstance(v.dtype, pd.StringDtype):
        return v.astype(object).where(v.notna(), None)
    return v


def _apply_compare(op: str, left, right) -> pd.Series:
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    if op == "<":
        return left < right
    if op == "<=":
        return left <= right
    if op == ">":
        return left > right
    return left >= right


def _describe(node) -> str:
    return f"column {node.name!r}" if isinstance(node, _Col) else repr(node.value)


def _short(text: str) -> str:
    return text if len(text) <= 200 else text[:200] + "..."


def _available(df: pd.DataFrame, missing: str) -> str:
    names = [str(c) for c in df.columns]
    close = difflib.get_close_matches(missing, names, n=3)
    shown = names[:12]
    parts = []
    if close:
        parts.append(f"did you mean {', '.join(map(repr, close))}?")
    more = f", ... ({len(names)} in all)" if len(names) > len(shown) else ""
    parts.append(f"columns: {', '.join(map(repr, shown))}{more}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------------------------
def _prepare(text: str, key: str) -> tuple[str, dict[str, str]]:
    """Outside string literals, as pandas' query does: ```any name``` becomes a plain identifier, ``&`` / ``|``
    become ``and`` / ``or`` (boolean precedence: ``a == 1 & b == 2`` reads as ``(a == 1) and (b == 2)``); ``@``
    (pandas' local variables) is refused."""
    prefix = "_pvcol"
    while prefix in text:
        prefix += "x"
    out, names = [], {}
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "'\"":
            quote = text[i:i + 3] if text[i:i + 3] in ("'''", '"""') else ch
            j = i + len(quote)
            while j < n and not text.startswith(quote, j):
                j += 2 if text[j] == "\\" else 1
            j = min(j + len(quote), n)
            out.append(text[i:j])
            i = j
        elif ch == "`":
            j = text.find("`", i + 1)
            if j < 0:
                raise ValueError(f"{key}: unclosed backtick in filter {_short(text)!r}")
            name = text[i + 1:j]
            if not name:
                raise ValueError(f"{key}: empty backtick-quoted name in filter {_short(text)!r}")
            placeholder = f"{prefix}{len(names)}_"
            names[placeholder] = name
            out.append(placeholder)
            i = j + 1
        elif ch in "&|":
            out.append(" and " if ch == "&" else " or ")
            i += 1
        elif ch == "@":
            raise ValueError(f"{key}: '@' (a local variable or a matrix product) is not allowed in a filter: "
                             f"{_short(text)!r}; write the value itself")
        else:
            out.append(ch)
            i += 1
    return "".join(out), names


class _Checker:
    """Turns a Python AST into the filter tree, refusing every node outside the whitelist."""

    def __init__(self, text: str, key: str, names: dict[str, str]):
        self.text, self.key, self.names = text, key, names
        self.columns: list[str] = []

    def refuse(self, node, why: str):
        try:
            piece = ast.unparse(node)
        except Exception:  # unparse of exotic or deep nodes: the node type is enough
            piece = type(node).__name__
        for ph, name in self.names.items():
            piece = piece.replace(ph, f"`{name}`")
        if len(piece) > _SHOWN:
            piece = piece[:_SHOWN] + "..."
        raise ValueError(f"{self.key}: {why}: {piece!r} in filter {_short(self.text)!r} (a filter is column names, "
                         "literals, comparisons, in [...], and / or / not, & / | / ~ and .isna() / .notna())")

    # boolean-valued nodes
    def cond(self, node, depth: int):
        if depth > MAX_DEPTH:
            raise ValueError(f"{self.key}: filter is nested more than {MAX_DEPTH} levels deep: {_short(self.text)!r}")
        if isinstance(node, ast.BoolOp):
            op = "and" if isinstance(node.op, ast.And) else "or"
            return _Logic(op, tuple(self.cond(v, depth + 1) for v in node.values))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert)):
            return _Not(self.cond(node.operand, depth + 1))
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Name):
            return _Bool(self.column(node))
        if isinstance(node, ast.Constant):
            self.refuse(node, "a literal alone is not a condition")
        self.refuse(node, self.what(node))

    def compare(self, node: ast.Compare):
        operands = [node.left, *node.comparators]
        parts = []
        for op, a, b in zip(node.ops, operands, operands[1:]):
            if isinstance(op, (ast.In, ast.NotIn)) or (
                    isinstance(op, (ast.Eq, ast.NotEq)) and isinstance(b, (ast.List, ast.Tuple, ast.Set))):
                if not isinstance(a, ast.Name):
                    self.refuse(node, "'in' needs a column on its left")
                if not isinstance(b, (ast.List, ast.Tuple, ast.Set)):
                    self.refuse(node, "'in' needs a list of literals on its right, e.g. col in ['a', 'b']")
                values = tuple(self.literal(v).value for v in b.elts)
                parts.append(_IsIn(self.column(a), values, isinstance(op, (ast.NotIn, ast.NotEq))))
                continue
            if type(op) not in _COMPARE:
                self.refuse(node, f"the comparison {type(op).__name__} is not allowed")
            left, right = self.value(a), self.value(b)
            if isinstance(left, _Lit) and isinstance(right, _Lit):
                self.refuse(node, "a comparison needs at least one column")
            parts.append(_Cmp(_COMPARE[type(op)], left, right))
        return parts[0] if len(parts) == 1 else _Logic("and", tuple(parts))

    def call(self, node: ast.Call):
        f = node.func
        if not (isinstance(f, ast.Attribute) and f.attr in _METHODS and isinstance(f.value, ast.Name)):
            self.refuse(node, _CALLS)
        if node.args or node.keywords:
            self.refuse(node, f".{f.attr}() takes no arguments")
        return _IsNa(self.column(f.value), _METHODS[f.attr])

    # value nodes
    def value(self, node):
        if isinstance(node, ast.Name):
            return self.column(node)
        return self.literal(node)

    def column(self, node: ast.Name) -> _Col:
        if not isinstance(node, ast.Name):
            self.refuse(node, "expected a column name")
        name = self.names.get(node.id, node.id)
        if node.id not in self.names and node.id.startswith("__"):
            self.refuse(node, "names starting with '__' are not allowed")
        if name not in self.columns:
            self.columns.append(name)
        return _Col(name)

    def literal(self, node) -> _Lit:
        if isinstance(node, ast.Constant):
            v = node.value
            if v is None or isinstance(v, (bool, int, float, str)):
                return _Lit(v)
            self.refuse(node, f"{type(v).__name__} literals are not allowed")
        if (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
                and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float)):
            v = node.operand.value
            return _Lit(-v if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.Name):
            self.refuse(node, "expected a literal (a column is not allowed here)")
        self.refuse(node, self.what(node))

    @staticmethod
    def what(node) -> str:
        kinds = {
            ast.Attribute: "attribute access is not allowed",
            ast.Subscript: "subscripts are not allowed",
            ast.Call: _CALLS,
            ast.Lambda: "lambdas are not allowed",
            ast.ListComp: "comprehensions are not allowed", ast.SetComp: "comprehensions are not allowed",
            ast.DictComp: "comprehensions are not allowed", ast.GeneratorExp: "comprehensions are not allowed",
            ast.JoinedStr: "f-strings are not allowed", ast.FormattedValue: "f-strings are not allowed",
            ast.NamedExpr: "':=' is not allowed",
            ast.Starred: "'*' unpacking is not allowed",
            ast.BinOp: "arithmetic is not allowed",
            ast.IfExp: "'x if c else y' is not allowed",
            ast.Dict: "dicts are not allowed",
            ast.List: "a list is only allowed after 'in'", ast.Tuple: "a tuple is only allowed after 'in'",
            ast.Set: "a set is only allowed after 'in'",
            ast.UnaryOp: "'-' / '+' apply to number literals only, '~' / 'not' to conditions",
            ast.Await: "'await' is not allowed", ast.Yield: "'yield' is not allowed",
            ast.YieldFrom: "'yield' is not allowed", ast.Slice: "slices are not allowed",
        }
        for kind, why in kinds.items():
            if isinstance(node, kind):
                return why
        return f"{type(node).__name__} is not allowed"


def parse_filter(text: str, *, key: str) -> RowFilter:
    """Parse and check a filter string (see the module docstring). ``key`` names where the string came from in
    the user's words (``"samples of step normalize in recipe r.yaml"``, ``"--query"``) and starts every error.

    Raises ``ValueError`` (naming ``key`` and the offending piece) for anything outside the language, an empty,
    over-long (> ``MAX_LENGTH`` characters) or too deeply nested string; ``TypeError`` for a non-string.
    """
    if not isinstance(text, str):
        raise TypeError(f"{key}: a filter must be a string, got {type(text).__name__} ({text!r:.80})")
    if not text.strip():
        raise ValueError(f"{key}: the filter is empty")
    if len(text) > MAX_LENGTH:
        raise ValueError(f"{key}: the filter is {len(text)} characters long; at most {MAX_LENGTH} are accepted")
    source, names = _prepare(text, key)
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"{key}: filter {_short(text)!r} is not a valid expression ({e.msg})") from None
    except (RecursionError, MemoryError, ValueError, OverflowError) as e:
        raise ValueError(f"{key}: filter {_short(text)!r} cannot be parsed (too deeply nested or too large: "
                         f"{type(e).__name__})") from None
    checker = _Checker(text, key, names)
    try:
        body = checker.cond(tree.body, 0)
    except (RecursionError, MemoryError) as e:
        raise ValueError(f"{key}: filter {_short(text)!r} is too deeply nested ({type(e).__name__})") from None
    return RowFilter(text=text, key=key, columns=tuple(checker.columns), _tree=body)


def filter_mask(df: pd.DataFrame, text: str, *, key: str) -> np.ndarray:
    """:func:`parse_filter` then :meth:`RowFilter.mask`: one bool per row of ``df``."""
    return parse_filter(text, key=key).mask(df)
