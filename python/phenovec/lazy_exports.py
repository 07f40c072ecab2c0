"""A package's public names bound on first use, so that importing the package (or one small submodule of it,
such as a stage's ``command``) does not import its heavy dependencies (torch, onnxruntime, matplotlib, Dask).

    __getattr__, __dir__ = lazy_exports(__name__, {"train": "loop", "load_config": "config"})

maps each public name to the submodule (relative to the package) that defines it; ``from pkg import name`` and
``pkg.name`` import that submodule the first time and return its attribute.
"""
from __future__ import annotations

import importlib


def lazy_exports(package: str, names: dict[str, str]):
    """The module-level ``__getattr__`` and ``__dir__`` of ``package`` for ``names`` (name -> submodule)."""
    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        import sys

        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
