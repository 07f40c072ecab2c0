"""The learners of the activity benchmark, by the name a benchmark config uses.

:data:`LEARNERS` maps a name to ``"submodule:ClassName"`` (a submodule of this package); :func:`learner_class`
imports the submodule on first use, so that listing or validating names imports neither scikit-learn nor PyTorch.
Every class implements :class:`phenovec.activity.learner.Learner` and is built with keyword arguments only
(``learner_class(name)(**options)``), the options a config gives under the learner's name.
"""
from __future__ import annotations

import importlib

#: learner name -> "submodule:ClassName" under phenovec.activity.learners
LEARNERS: dict[str, str] = {
    "logreg": "baselines:LogisticRegressionLearner",
    "fnn": "baselines:FNNLearner",
    "gbm": "baselines:GradientBoostingLearner",
    "protonet": "protonet:ProtoNetLearner",
    "maml": "maml:MAMLLearner",
    "maml_fo": "maml:FirstOrderMAMLLearner",
    "multitask": "multitask:MultitaskLearner",
    "protonet_img": "images:ImageProtoNetLearner",
    "maml_img": "images:ImageMAMLLearner",
}


def learner_class(name: str):
    """The learner class registered as ``name``; ``KeyError`` listing the known names otherwise."""
    if name not in LEARNERS:
        raise KeyError(f"unknown learner {name!r}; known: {', '.join(sorted(LEARNERS))}")
    module, cls = LEARNERS[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
