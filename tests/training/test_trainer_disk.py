"""A full disk or an unwritable output directory: a clear error before training starts, nothing
half-written; a disk that fills up mid-run keeps the earlier checkpoints intact.

A read-only directory (chmod) cannot be simulated here: the tests run as root, who writes anyway.
A path below a regular file stands in for an output directory that cannot be created.
"""

import errno
import shutil
from collections import namedtuple

import pytest

from rablip.config import load_config
from rablip.errors import ConfigError, RablipError
from rablip.stages.rundir import prepare_run_dir
from rablip.stages.runtime import make_accelerator
from rablip.training import checkpoint
from tests.training.launch import FINETUNE, FINETUNE_CONFIG, run
from tests.training.toy_task import ToyLoss, build_task, train_toy

DiskUsage = namedtuple("DiskUsage", "total used free")


def toy_train(run_dir, loss, *overrides):
    cfg = load_config(None, ["train.max_steps=8", "train.warmup_steps=2", "train.batch_size=8", "train.save_every=3",
                             "train.deterministic=false", f"run.output_dir={run_dir}", *overrides])
    accelerator = make_accelerator(cfg)
    prepared = prepare_run_dir(cfg, accelerator.is_main_process)
    return train_toy(cfg, build_task(cfg, loss), accelerator, prepared)


def test_disk_full_is_refused_before_the_first_step(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    loss = ToyLoss()
    with pytest.raises(RablipError, match="not enough disk space .* 1 MiB free"):
        toy_train(tmp_path / "run", loss)
    assert loss.calls == 0
    left = {p.name for p in (tmp_path / "run").rglob("*")}
    assert left <= {"config.yaml", "checkpoints"}, left
    assert not list((tmp_path / "run").rglob("*.safetensors")) and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_output_dir_below_a_file_is_a_config_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot write to run.output_dir .*a_file/sub"):
        toy_train(blocker / "sub", ToyLoss())
    assert blocker.read_text() == "not a directory" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_output_dir_that_is_a_file_is_a_config_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        toy_train(blocker, ToyLoss())
    assert blocker.read_text() == "keep me"


def test_unwritable_checkpoint_dir_is_refused_before_the_first_step(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("a file where the checkpoints go")
    loss = ToyLoss()
    with pytest.raises(RablipError, match="cannot create the checkpoint directory"):
        toy_train(run_dir, loss, "run.overwrite=true")
    assert loss.calls == 0 and not (run_dir / "metrics.jsonl").exists()


def test_disk_filling_up_mid_run_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    real_save_file = checkpoint.save_file

    def save_file(tensors, path):
        if "step-00000006" in path:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save_file(tensors, path)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    with pytest.raises(RablipError, match="cannot write the checkpoint .*step-00000006: No space left on device"):
        toy_train(tmp_path / "run", ToyLoss())
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-00000003"]
    assert (tmp_path / "run" / "checkpoints" / "step-00000003" / "trainer_state.json").is_file()


def test_finetune_entry_point_reports_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run(FINETUNE, ["--config", FINETUNE_CONFIG, f"run.output_dir={blocker}/sub",
                            f"data.root={tmp_path}/world"], timeout=60)
    assert result.returncode == 2
    assert "error: cannot write to run.output_dir" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"], "nothing may be built before the check"
