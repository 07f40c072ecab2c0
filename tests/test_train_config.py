"""Training configuration: defaults, overrides, and errors that name the key or file."""
import pytest
import yaml

from phenovec.train.config import ConfigError, config_hash, default_config, load_config


def _write(tmp_path, body: dict):
    (tmp_path / "crops").mkdir(exist_ok=True)
    p = tmp_path / "train.yaml"
    p.write_text(yaml.safe_dump(body))
    return p


def test_defaults_and_relative_paths(tmp_path):
    cfg = load_config(_write(tmp_path, {"data": {"crops": "crops"}}))
    d = default_config()
    assert cfg["optim"] == d["optim"] and cfg["augment"] == d["augment"]
    assert cfg["data"]["crops"] == str((tmp_path / "crops").resolve())
    assert cfg["train"]["out"] == str((tmp_path / "train-out").resolve())
    assert cfg["optim"]["weight_decay"] == 1e-4 and cfg["optim"]["warmup_epochs"] == 5


def test_overrides_and_hash(tmp_path):
    p = _write(tmp_path, {"data": {"crops": "crops"}})
    a = load_config(p)
    b = load_config(p, {"train.epochs": 30})
    c = load_config(p, {"data.workers": 0, "train.out": "elsewhere"})
    assert b["train"]["epochs"] == 30
    assert config_hash(a) != config_hash(b)
    assert config_hash(a) == config_hash(c)  # run-control keys do not change the weights


@pytest.mark.parametrize("body, match", [
    ({"data": {"crops": "crops"}, "optim": {"momentun": 0.5}}, r"optim\.momentun.*did you mean 'momentum'"),
    ({"data": {"crops": "crops"}, "optimizer": {}}, r"unknown section 'optimizer'.*'optim'"),
    ({"data": {"crops": "crops", "batch_size": "64"}}, r"data\.batch_size must be int, got str"),
    ({"data": {"crops": "crops", "batch_size": True}}, r"data\.batch_size must be int, got a boolean"),
    ({"data": {"crops": "crops"}, "optim": {"lr": -1.0}}, r"optim\.lr = -1\.0 is outside"),
    ({"data": {"crops": "crops"}, "optim": {"schedule": "linear"}}, r"optim\.schedule = 'linear' is not one of"),
    ({"data": {"crops": "nope"}}, r"data\.crops: 'nope' does not exist"),
    ({"data": {"crops": "crops"}, "model": {"weights": "w.pt"}}, r"model\.weights: 'w\.pt' is not a file"),
    ({"data": {"crops": "crops"}, "model": {"arch": "efficientnet_b9"}}, r"model\.arch = 'efficientnet_b9'"),
    ({"data": {"crops": "crops"}, "augment": {"contrast": [1.2, 0.8]}}, r"augment\.contrast"),
    ({"data": {"crops": "crops"}, "train": {"device": "tpu"}}, r"train\.device = 'tpu'"),
    ({}, r"data\.crops is required"),
    ({"data": {"crops": "crops"}, "train": {"epochs": 3}}, r"optim\.warmup_epochs \(5\) must be shorter than train\.epochs"),
])
def test_errors_name_the_key(tmp_path, body, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(_write(tmp_path, body))
    assert "train.yaml" in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
