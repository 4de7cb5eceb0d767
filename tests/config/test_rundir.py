"""The run directory keeps the config that started it and refuses silent mix-ups."""

import pytest
import yaml

from rablip.config.load import load_config
from rablip.errors import ConfigError
from rablip.stages.rundir import prepare_run_dir


def cfg_for(out, *extra):
    return load_config(None, [f"run.output_dir={out}", *extra])


def test_writes_resolved_config(tmp_path):
    out = prepare_run_dir(cfg_for(tmp_path / "r", "train.lr=0.5"))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["lr"] == 0.5 and saved["run"]["output_dir"] == str(tmp_path / "r")


def test_same_config_may_start_again(tmp_path):
    prepare_run_dir(cfg_for(tmp_path / "r"))
    (tmp_path / "r" / "metrics.jsonl").write_text("{}\n")
    prepare_run_dir(cfg_for(tmp_path / "r"))


def test_different_config_refused_and_nothing_overwritten(tmp_path):
    prepare_run_dir(cfg_for(tmp_path / "r", "train.lr=0.5"))
    before = (tmp_path / "r" / "config.yaml").read_text()
    with pytest.raises(ConfigError) as err:
        prepare_run_dir(cfg_for(tmp_path / "r", "train.lr=0.7"))
    assert "train.lr" in str(err.value) and "run.resume=true" in str(err.value)
    assert (tmp_path / "r" / "config.yaml").read_text() == before


def test_resume_or_overwrite_accept_a_different_config(tmp_path):
    prepare_run_dir(cfg_for(tmp_path / "r", "train.lr=0.5"))
    prepare_run_dir(cfg_for(tmp_path / "r", "train.lr=0.7", "run.resume=true"))
    prepare_run_dir(cfg_for(tmp_path / "r", "train.lr=0.9", "run.overwrite=true"))
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["train"]["lr"] == 0.9


def test_non_run_directory_refused(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "precious.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a rablip run"):
        prepare_run_dir(cfg_for(tmp_path / "r"))
    assert not (tmp_path / "r" / "config.yaml").exists()
