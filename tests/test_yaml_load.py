"""Numbers with an exponent (``1e-4``) in recipes, configurations and ``--set`` values are numbers: PyYAML (YAML 1.1)
read them as strings, so ``weight_decay: 1e-4`` was refused as "must be float, got str" and a recipe's
``threshold: 1e2`` reached numpy as text."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from phenovec.io.yaml_load import load_yaml


def test_exponent_numbers_are_floats_and_nothing_else_changes():
    text = """
    a: 1e-4
    b: 5E+2
    c: 1.0e5
    d: .5e3
    e: -2e2
    f: 1.5
    g: 10
    h: "1e-3"
    i: 1e
    j: abc1e5
    k: [1e-6, x, null, true]
    l: .inf
    """
    got = load_yaml(text)
    assert got == {"a": 1e-4, "b": 500.0, "c": 1e5, "d": 500.0, "e": -200.0, "f": 1.5, "g": 10, "h": "1e-3",
                   "i": "1e", "j": "abc1e5", "k": [1e-6, "x", None, True], "l": float("inf")}
    assert all(type(got[k]) is float for k in "abcde")
    assert yaml.safe_load("a: 1e-4")["a"] == "1e-4"  # PyYAML's own reading, which the loader corrects
    with pytest.raises(yaml.constructor.ConstructorError):  # still the safe loader: no object is ever built
        load_yaml("!!python/object/apply:os.system ['true']")


def test_recipe_file_with_exponent_numbers_runs(tmp_path):
    from phenovec.process.recipe import Recipe, apply_recipe

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"Metadata_Plate": ["P1"] * 40, "Cells_a": rng.normal(size=40) * 1e3,
                       "Cells_b": rng.normal(size=40)})
    path = tmp_path / "r.yaml"
    path.write_text("name: t\nsteps:\n  - remove_outliers: {threshold: 1e2, features: [Cells_a, Cells_b]}\n")
    recipe = Recipe.load(path)
    assert recipe.steps[0][1]["threshold"] == 100.0
    out = apply_recipe(recipe, df)
    assert list(out.columns) == ["Metadata_Plate", "Cells_b"]  # Cells_a's 99th percentile is above 1e2
    assert Recipe.load(path, overrides=["remove_outliers.threshold=5e3"]).steps[0][1]["threshold"] == 5000.0


def test_training_configuration_takes_exponent_numbers(tmp_path):
    from phenovec.train.command import _parse_override
    from phenovec.train.config import load_config

    (tmp_path / "crops").mkdir()
    path = tmp_path / "train.yaml"
    path.write_text("data:\n  crops: crops\noptim:\n  lr: 3e-3\n  weight_decay: 5e-5\n")
    cfg = load_config(path)
    assert cfg["optim"]["lr"] == 3e-3 and cfg["optim"]["weight_decay"] == 5e-5
    assert _parse_override("optim.lr=1e-4") == ("optim.lr", 1e-4)
    assert load_config(path, dict([_parse_override("optim.lr=2E-2")]))["optim"]["lr"] == 2e-2


def test_printed_configurations_read_back():
    """A string that reads as an exponent number ("1e5", a treatment named so) is quoted when phenovec prints it."""
    from phenovec.commented_yaml import inline_yaml

    for value in ("1e5", "2E-3", [1e5, "3e1"], {"control": "1e5", "lr": 1e-4}):
        text = inline_yaml(value)
        assert load_yaml(text) == value and yaml.safe_load(text) == value, text


def test_errors_keep_their_type_and_gain_where():
    from phenovec.error_context import with_context

    e = with_context(KeyError("Metadata_X"), "recipe 'r', step 2 (pca)")
    assert type(e) is KeyError and e.args[0] == "recipe 'r', step 2 (pca): Metadata_X"
    # a constructor that takes other arguments: the nearest plain type, naming the original
    bad = UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte")
    e = with_context(bad, "plate.csv: cannot read as csv")
    assert type(e) is ValueError and str(e).startswith("plate.csv: cannot read as csv: UnicodeDecodeError: 'utf-8'")
    same = ValueError("w: said already")
    assert with_context(same, "w") is same
