"""``phenovec run --print-config`` / ``phenovec train --print-config``: YAML that loads to exactly the defaults the
code uses, every key with a comment; the keys that default to null say what they accept."""
import re
import subprocess
import sys

import pytest
import yaml

from phenovec import pipeline
from phenovec.commented_yaml import commented_yaml
from phenovec.train import config as train_config


def _print_config(stage: str) -> str:
    r = subprocess.run([sys.executable, "-m", "phenovec.cli", stage, "--print-config"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _keys(cfg: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        out.append(prefix + k)
        if isinstance(v, dict) and v:
            out += _keys(v, f"{prefix}{k}.")
    return out


def _comments(text: str) -> dict[str, str]:
    """dotted key -> its comment, from the printed YAML's lines."""
    found, stack = {}, []
    for line in text.splitlines():
        m = re.match(r"^( *)([A-Za-z_]\w*):(.*)$", line)
        assert m, f"not a key line: {line!r}"
        depth = len(m.group(1)) // 2
        stack[depth:] = [m.group(2)]
        comment = m.group(3).partition(" # ")[2].strip()
        found[".".join(stack)] = comment
    return found


@pytest.mark.parametrize("stage, defaults", [("run", pipeline.default_config),
                                             ("train", train_config.default_config)])
def test_print_config_is_the_code_defaults_with_a_comment_on_every_key(stage, defaults):
    text = _print_config(stage)
    assert yaml.safe_load(text) == defaults()
    comments = _comments(text)
    assert sorted(comments) == sorted(_keys(defaults()))
    assert all(len(c) > 3 for c in comments.values()), [k for k, c in comments.items() if len(c) <= 3]


def test_run_defaults_are_the_ones_load_run_config_fills_in(tmp_path):
    printed = yaml.safe_load(_print_config("run"))
    cfg = pipeline.load_run_config({"synth": {}})  # the smallest valid configuration: every other key defaulted
    for section in ("crop", "export", "profile", "process", "report", "train"):
        assert cfg[section] == printed[section], section
    assert cfg["images"]["channels"] == printed["images"]["channels"] and cfg["model"] is printed["model"] is None
    # the pipeline's training defaults are phenovec train's (not the demo's tiny ResNet); the demo sets its own
    assert printed["train"]["model"]["arch"] == train_config.default_config()["model"]["arch"]
    assert "crops" not in printed["train"]["data"] and "out" not in printed["train"]["train"]
    demo = pipeline.demo_config()
    assert demo["train"]["model"]["arch"] == "resnet_tiny" and demo["crop"]["box_size"] == 48


def test_null_keys_say_what_they_accept():
    comments = _comments(_print_config("run"))
    assert "plates" in comments["synth"] and "wells" in comments["synth"]
    assert "ONNX" in comments["model"]
    assert "recipe" in comments["process.steps"] and "null" in comments["process.steps"]


def test_a_key_without_a_comment_is_refused():
    with pytest.raises(KeyError, match="b.c"):
        commented_yaml({"a": 1, "b": {"c": 2}}, {"a": "x", "b": "y"})
