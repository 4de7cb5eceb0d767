"""The entry points' shared command line: --print-config, overrides, exit code 2 on bad configs."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FINETUNE = "configs/experiment/synthetic_finetune.yaml"


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("entry, config", [
    ("run_pretrain.py", "configs/experiment/synthetic_pretrain.yaml"),
    ("run_finetune.py", FINETUNE),
    ("run_eval.py", "configs/experiment/synthetic_eval.yaml"),
])
def test_print_config_prints_resolved_yaml(entry, config, tmp_path):
    result = run(entry, "--config", config, "--print-config", f"run.output_dir={tmp_path}/r", "retrieval.k=4")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["retrieval"]["k"] == 4 and printed["run"]["output_dir"] == f"{tmp_path}/r"
    assert "${" not in result.stdout
    assert not (tmp_path / "r").exists(), "--print-config must not do anything else"


def test_typo_exits_2_naming_the_key():
    result = run("run_finetune.py", "--config", FINETUNE, "train.lrr=1")
    assert result.returncode == 2
    assert "train.lrr" in result.stderr and "did you mean 'train.lr'" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_shows_traceback():
    result = run("run_finetune.py", "--config", FINETUNE, "train.lrr=1", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_missing_config_file_exits_2(tmp_path):
    result = run("run_eval.py", "--config", str(tmp_path / "none.yaml"))
    assert result.returncode == 2 and "not found" in result.stderr


def test_demo_refuses_a_non_empty_output_dir_and_leaves_it_alone(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = run("scripts/demo.py", "--entities", "12", "--out", str(tmp_path))
    assert result.returncode == 2 and "is not empty" in result.stderr and "Traceback" not in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
