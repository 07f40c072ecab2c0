"""phenovec train routes a configuration by its train.task: crops tasks to the image trainer, profile-table tasks
(clip, bae, simclr_profiles, fnn) to phenovec.train.tables; --print-config --task prints that task's keys."""
import json

import yaml

from phenovec.cli import main
from phenovec.train.tables.synthetic import synthetic_config, write_synthetic_tables


def test_table_task_config_runs_the_table_trainer(tmp_path, capsys):
    paths = write_synthetic_tables(tmp_path / "tables", seed=0)
    cfg = synthetic_config(paths, "clip", str(tmp_path / "run"), epochs=1)
    f = tmp_path / "clip.yaml"
    f.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(f), "--set", "train.epochs=1", "--quiet"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert summary["task"] == "clip" and summary["epochs"] == 1
    assert (tmp_path / "run" / "last.pt").is_file()


def test_print_config_per_task(capsys):
    assert main(["train", "--print-config", "--task", "clip"]) == 0
    clip = yaml.safe_load(capsys.readouterr().out)
    assert clip["train"]["task"] == "clip" and "tx" in clip["data"]
    assert main(["train", "--print-config", "--task", "assays"]) == 0
    assays = yaml.safe_load(capsys.readouterr().out)
    assert assays["train"]["task"] == "assays" and "labels" in assays["assays"]
    assert main(["train", "--print-config", "--task", "nonsense"]) == 2
    assert "train.task = 'nonsense' is unknown" in capsys.readouterr().err


def test_export_routes_a_table_checkpoint(tmp_path, capsys):
    paths = write_synthetic_tables(tmp_path / "tables", seed=1)
    cfg = synthetic_config(paths, "simclr_profiles", str(tmp_path / "run"), epochs=1)
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(f), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run" / "last.pt"), "-o", str(tmp_path / "m.onnx"), "--quiet"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert summary["input_kind"] == "profiles" and (tmp_path / "m.onnx").is_file()
    assert main(["export", str(tmp_path / "run" / "last.pt"), "-o", str(tmp_path / "x.onnx"), "--logits"]) == 2
    assert "profile-table run" in capsys.readouterr().err
