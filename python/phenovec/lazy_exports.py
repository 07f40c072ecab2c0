"""A package's public names bound on first use, so that importing the package (or one small submodule of it,
such as a stage's ``command``) does not import its heavy dependencies (torch, onnxruntime, matplotlib, Dask).

    __getattr__, __dir__ = lazy_exports(__name__, {"train": "loop", "load_config": "config"})

maps each public name to the submodule (relative to the package, or an absolute ``phenovec.`` module name for a
name another stage defines) that defines it; ``from pkg import name`` and
``pkg.name`` import that submodule the first time and return its attribute. A public name may be a submodule's
name too (pycytominer's ``phenovec.process.normalize`` is the step function): the import system binds each imported
submodule on its package under its name, which would shadow the function, so that binding is skipped for the
public names; the submodules stay importable (``sys.modules``, ``from pkg.normalize import ...``).
"""
from __future__ import annotations

import importlib
import sys
import types


def lazy_exports(package: str, names: dict[str, str]):
    """The module-level ``__getattr__`` and ``__dir__`` of ``package`` for ``names`` (name -> submodule); also keeps
    each public name ahead of a same-named submodule (module docstring)."""
    def __getattr__(name: str):
        if name in names:
            target = names[name]  # a submodule of the package, or an absolute "phenovec.<stage>.<module>"
            return getattr(importlib.import_module(target if target.startswith("phenovec.") else
                                                   f"{package}.{target}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(names))

    public = frozenset(names)

    class PublicNamesFirst(types.ModuleType):
        def __setattr__(self, name, value):
            if name in public and isinstance(value, types.ModuleType):
                return  # a submodule of the same name: the public name (through __getattr__) wins
            super().__setattr__(name, value)

    sys.modules[package].__class__ = PublicNamesFirst
    return __getattr__, __dir__
