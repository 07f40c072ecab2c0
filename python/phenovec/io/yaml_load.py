"""YAML as phenovec reads recipes, configurations and ``--set`` values: PyYAML's safe loader (plain data only, no
tag builds an object), except that a number written with an exponent and no dot (``1e-4``, ``5E+2``, ``1.0e5``) is
a float, as YAML 1.2 and every user reads it. PyYAML follows YAML 1.1, whose floats need a dot and a signed
exponent, so ``lr: 1e-4`` came back as the string ``'1e-4'``."""
from __future__ import annotations

import re

import yaml

EXPONENT_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")


class _Loader(yaml.SafeLoader):
    pass




class ExponentSafeDumper(yaml.SafeDumper):
    """PyYAML's safe dumper that quotes a string which :func:`load_yaml` would read as a number (``"1e5"``), so
    what phenovec prints (``--print-config``) reads back as it was."""


for _cls in (_Loader, ExponentSafeDumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(rf"^(?:{EXPONENT_FLOAT.pattern})$"),
                               list("-+0123456789."))


def load_yaml(text: str):
    """The data in YAML ``text`` (``yaml.YAMLError`` if it is not YAML), exponent numbers read as floats."""
    return yaml.load(text, Loader=_Loader)
