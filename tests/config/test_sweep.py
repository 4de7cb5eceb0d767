"""Sweep expansion, naming, launching as argument lists, and metric collection."""

import json
import sys
from pathlib import Path

import pytest

from rablip.config.sweep import (
    collect,
    entry_point_for,
    expand,
    launch_command,
    parse_axes,
    run_name,
    split_values,
    write_tables,
)
from rablip.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
FINETUNE = ROOT / "configs" / "experiment" / "synthetic_finetune.yaml"


def test_cartesian_product_and_names(tmp_path):
    runs = expand(parse_axes(["train.lr=1e-4,3e-4", "retrieval.k=3,5"]), tmp_path)
    assert [r.overrides for r in runs] == [
        ["train.lr=1e-4", "retrieval.k=3"], ["train.lr=1e-4", "retrieval.k=5"],
        ["train.lr=3e-4", "retrieval.k=3"], ["train.lr=3e-4", "retrieval.k=5"]]
    assert [r.name for r in runs] == ["lr=1e-4__k=3", "lr=1e-4__k=5", "lr=3e-4__k=3", "lr=3e-4__k=5"]
    assert all(r.output_dir == tmp_path / r.name for r in runs)


def test_name_uses_full_key_when_leaves_clash():
    assert run_name(["data.train.path=a", "data.val.path=b"]) == "data.train.path=a__data.val.path=b"


def test_name_is_filesystem_safe():
    name = run_name(["run.name=a b/c"])
    assert "/" not in name and " " not in name


def test_list_values_keep_their_commas():
    assert split_values("[a,b],[c]") == ["[a,b]", "[c]"]
    axes = parse_axes(["model.trainable=[qformer,query_tokens],[qformer]"])
    assert axes == [("model.trainable", ["[qformer,query_tokens]", "[qformer]"])]


def test_unknown_axis_names_nearest():
    with pytest.raises(ConfigError, match="did you mean 'train.lr'"):
        parse_axes(["train.lrr=1,2"])


@pytest.mark.parametrize("axis", ["train.lr", "train.lr=", "run.output_dir=a,b"])
def test_bad_axes(axis):
    with pytest.raises(ConfigError):
        parse_axes([axis])


def test_entry_point_from_config_name():
    assert entry_point_for(FINETUNE) == "run_finetune.py"
    assert entry_point_for("x/okvqa_eval.yaml") == "run_eval.py"
    with pytest.raises(ConfigError, match="--entry"):
        entry_point_for("x/mine.yaml")


def test_launch_command_is_an_argument_list(tmp_path):
    run = expand(parse_axes(["run.name=a b;rm -rf x"]), tmp_path)[0]
    command = launch_command("run_finetune.py", FINETUNE, ["train.max_steps=2"], run)
    assert command[0] == sys.executable and command[1].endswith("run_finetune.py")
    assert "run.name=a b;rm -rf x" in command  # one argument, never interpreted by a shell
    assert command[-1] == f"run.output_dir={run.output_dir}"


def test_collect_reads_metrics_json_and_jsonl(tmp_path):
    runs = expand(parse_axes(["retrieval.k=3,5"]), tmp_path)
    runs[0].output_dir.mkdir(parents=True)
    (runs[0].output_dir / "metrics.json").write_text(json.dumps({"scores": {"overall": 51.5, "per_question": {"1": 100}}}))
    runs[1].output_dir.mkdir(parents=True)
    (runs[1].output_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n')
    rows = collect(runs, [0, 1])
    assert rows[0]["overall"] == 51.5 and rows[0]["status"] == "ok" and rows[0]["retrieval.k"] == "3"
    assert rows[1]["loss"] == 2.5 and rows[1]["status"] == "exit 1"
    csv_path, md_path = write_tables(rows, tmp_path)
    assert "overall" in csv_path.read_text().splitlines()[0]
    assert md_path.read_text().count("\n") == 4


def test_sweep_cli_dry_run_and_local_run(tmp_path):
    import subprocess

    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--config", str(FINETUNE),
         "--grid", "train.lr=1e-4,3e-4", "retrieval.k=3,5", "--dry-run", "--out", str(tmp_path / "s")],
        capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4 and all("run_finetune.py" in line for line in lines)
    assert any("train.lr=3e-4 retrieval.k=5" in line for line in lines)

    bad = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--config", str(FINETUNE), "--grid", "train.lrr=1,2"],
        capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "did you mean 'train.lr'" in bad.stderr and "Traceback" not in bad.stderr


def test_local_launcher_runs_each_command_without_a_shell(tmp_path):
    from rablip.config.sweep import launch

    marker = tmp_path / "ran;touch pwned"
    commands = [[sys.executable, "-c", "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text('x')", str(marker)],
                [sys.executable, "-c", "raise SystemExit(3)"]]
    assert launch(commands, "local", dry_run=False) == [0, 3]
    assert marker.exists() and not (tmp_path / "pwned").exists()
