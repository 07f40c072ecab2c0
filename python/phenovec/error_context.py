"""An error re-raised with where it happened in front of its message ("recipe 'x', step 2 (harmony): ...",
"plate.csv: cannot read as csv: ..."), keeping its type so that callers' ``except`` clauses still catch it."""
from __future__ import annotations


def with_context(e: BaseException, where: str) -> BaseException:
    """``e`` rebuilt with ``where: `` before its message, its traceback kept: the same type when its constructor
    takes the message alone (``ValueError``, ``KeyError``, ...); otherwise (``UnicodeDecodeError``'s five
    arguments) the nearest of ``KeyError`` / ``FileNotFoundError`` / ``ValueError`` / ``OSError`` it is, naming the
    original type. ``e`` itself when its message already starts with ``where``."""
    msg = str(e.args[0]) if len(e.args) == 1 else str(e)
    if msg.startswith(where):
        return e
    if len(e.args) == 1 and isinstance(e.args[0], str):
        try:
            new = type(e)(f"{where}: {msg}")
        except Exception:  # a constructor that wants other arguments
            new = None
        if new is not None and str(new.args[0] if new.args else "").startswith(where):
            return new.with_traceback(e.__traceback__)
    base = next(t for t in (KeyError, FileNotFoundError, ValueError, OSError, Exception) if isinstance(e, t))
    return base(f"{where}: {type(e).__name__}: {e}").with_traceback(e.__traceback__)
