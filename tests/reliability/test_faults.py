"""Faults survived: a process SIGKILLed at precise moments while it writes a checkpoint, an index or
embedding shards; non-finite losses; a full disk. The killed processes die by a real SIGKILL sent
from inside the function being interrupted (tests/reliability/killpoint.py), so what is left on disk
is what a power cut would leave.

Covered elsewhere and not repeated here (RELIABILITY.md lists them): SIGKILL between checkpoints and
SIGTERM (tests/training/test_trainer_resume.py, test_finetune_resume.py), non-finite losses and
gradients (tests/training/test_trainer_nonfinite.py), disk full and unwritable output directories
(tests/training/test_trainer_disk.py), interrupted shard writes (tests/retrieval/test_shards.py).
"""

from __future__ import annotations

import shutil
import signal
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from tqdm.auto import tqdm

from rablip.errors import RablipError
from rablip.retrieval.index import Index, build_index
from rablip.retrieval.index_manifest import IndexCheckError
from rablip.training.checkpoint import list_checkpoints, load_checkpoint
from rablip.utils.cli import run_main
from tests.retrieval.tiny_world import one_thread
from tests.training import toy_task
from tests.training.launch import TOY, final_bytes, metrics_lines, run
from tests.training.test_trainer_nonfinite import AlwaysNaN, assert_all_finite

KILLPOINT = str(Path(__file__).with_name("killpoint.py"))
STEPS = 8
TOY_ARGS = [f"train.max_steps={STEPS}", "train.save_every=4", "train.warmup_steps=2", "train.lr=0.05",
            "train.batch_size=6", "train.grad_accum=2", "train.deterministic=false", "data.num_workers=0",
            "log.every=1"]
"""Checkpoints at steps 4 and 8, and step 8 written a second time at the end of the run."""


def killed(target: str, match: str, script: str, args: list[str], *, after: bool = False, nth: int = 1,
           timeout: float = 120) -> None:
    """Run ``script`` until the ``nth`` call of ``target`` matching ``match``; assert it died by SIGKILL."""
    point = ["--target", target, "--match", match, "--nth", str(nth), *(["--after"] if after else [])]
    result = run(KILLPOINT, [*point, "--", script, *args], timeout=timeout)
    assert result.returncode == -signal.SIGKILL, f"not killed (exit {result.returncode}):\n{result.stderr[-3000:]}"


def assert_every_listed_checkpoint_loads(run_dir: Path) -> None:
    for path in list_checkpoints(run_dir):
        load_checkpoint(path, toy_task.toy_model(0), None)


def toy_in_process(out: Path, *extra: str) -> None:
    """The toy run in this process (one thread, as the killed subprocess), to the end."""
    with one_thread():
        assert toy_task.run([*TOY_ARGS, *extra, f"run.output_dir={out}"]) == 0


def logged_steps(out: Path) -> list[int]:
    return [record["step"] for record in metrics_lines(out)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> bytes:
    """``final/model.safetensors`` of an uninterrupted toy run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    toy_in_process(out)
    return final_bytes(out)


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one_and_resumes_bit_exactly(tmp_path, reference):
    out = tmp_path / "run"
    # Killed right after step 8's weights reached the temporary directory.
    killed("rablip.training.checkpoint.save_file", r"step-00000008.*model\.safetensors", TOY,
           [*TOY_ARGS, f"run.output_dir={out}"], after=True)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names[0].startswith(".tmp-step-00000008") and names[1:] == ["step-00000004"], names
    assert [p.name for p in list_checkpoints(out)] == ["step-00000004"]
    assert_every_listed_checkpoint_loads(out)

    before = (out / "metrics.jsonl").read_text().splitlines()
    assert logged_steps(out) == list(range(1, 9))
    toy_in_process(out, "run.resume=true")
    # Resumed from step 4: steps 1-4 are kept as they were, 5-8 are logged again (once).
    assert logged_steps(out) == list(range(1, 9))
    assert (out / "metrics.jsonl").read_text().splitlines()[:4] == before[:4], "not resumed from step 4"
    assert final_bytes(out) == reference
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000004", "step-00000008"]


def test_sigkill_while_deleting_the_checkpoint_a_resave_replaces_never_leaves_a_broken_one(tmp_path, reference):
    out = tmp_path / "run"
    # Step 8 is saved by the loop, then again at the end of the run; the first weights file deleted
    # belongs to the checkpoint being replaced (keep_last keeps step 4, so nothing else is deleted).
    # Deleted in directory order, the old checkpoint would look complete without its weights.
    killed("os.unlink", r"(^|/)model\.safetensors$", TOY, [*TOY_ARGS, "train.keep_last=10", f"run.output_dir={out}"],
           after=True)
    assert_every_listed_checkpoint_loads(out)
    assert list_checkpoints(out)[-1].name == "step-00000008"

    toy_in_process(out, "train.keep_last=10", "run.resume=true")
    assert logged_steps(out) == list(range(1, 9)), "not resumed from step 8"
    assert final_bytes(out) == reference
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000004", "step-00000008"]


def test_sigkill_between_moving_the_old_checkpoint_aside_and_renaming_the_new_one_keeps_the_step(tmp_path, reference):
    out = tmp_path / "run"
    # keep_last=1: step 4 is gone by then, so the step-8 checkpoint is the only one there is.
    killed("os.replace", r"\.tmp-step-00000008-\d+ \S*/step-00000008$", TOY,
           [*TOY_ARGS, "train.keep_last=1", f"run.output_dir={out}"], nth=2)
    assert [p.name for p in list_checkpoints(out)] == [".old-step-00000008"]
    assert_every_listed_checkpoint_loads(out)

    toy_in_process(out, "train.keep_last=1", "run.resume=true")
    assert logged_steps(out) == list(range(1, 9)), "not resumed from step 8"
    assert final_bytes(out) == reference
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000008"]


# --- index building -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def embeddings_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("embeddings") / "emb.npy"
    rows = np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32)
    np.save(path, rows / np.linalg.norm(rows, axis=1, keepdims=True))
    return path


@pytest.mark.parametrize("target, after", [
    ("faiss.write_index", True),  # index.faiss written, no manifest yet
    ("rablip.utils.artefacts.replace_directory", False),  # complete, not yet renamed into place
])
def test_sigkill_during_index_build_leaves_nothing_that_loads(tmp_path, embeddings_file, target, after):
    out = tmp_path / "index"
    killed(target, "", "scripts/build_index.py",
           ["--embeddings", str(embeddings_file), "--index-type", "flat", "--out", str(out)], after=after)
    assert not out.exists()
    with pytest.raises(IndexCheckError, match="index directory not found"):
        Index.load(out)
    leftovers = list(tmp_path.glob(".index.building-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "index.faiss").is_file()
    if target == "faiss.write_index":  # a half-built directory is refused even when pointed at
        with pytest.raises(IndexCheckError, match="manifest"):
            Index.load(leftovers[0])
    # The same command afterwards builds the index.
    build_index(embeddings_file, out, index_type="flat")
    assert Index.load(out).count == 200


# --- knowledge-base encoding ---------------------------------------------------------------------

def test_sigkill_during_kb_encoding_resumes_from_the_finished_shards(tmp_path):
    from rablip.config import load_config
    from rablip.retrieval.encode import ShardPlan
    from rablip.retrieval.groups import GROUPS
    from rablip.retrieval.shards import open_embeddings
    from rablip.stages.encode_kb import encode_knowledge_base
    from tests.retrieval.tiny_world import PRETRAIN_CONFIG, make_tiny_world, world_overrides

    with one_thread():
        make_tiny_world(tmp_path)
    overrides = world_overrides(tmp_path)
    # Shard 0 is written for both groups, then shard 1's image group: shard 1 is unfinished.
    killed("rablip.retrieval.encode.write_shard", "", "scripts/encode_kb.py",
           ["--config", str(PRETRAIN_CONFIG), *overrides], nth=3, after=True)
    index_dir, embeddings = tmp_path / "index", tmp_path / "index" / "embeddings"
    assert not (index_dir / "retrieval_index.json").exists()
    for group in GROUPS:
        assert not (embeddings / group / "shards.json").exists()
        with pytest.raises(RablipError):
            open_embeddings(embeddings / group)
    first = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in embeddings.rglob("shard_00000.npy")}
    assert len(first) == len(GROUPS)

    with one_thread():
        summary = encode_knowledge_base(load_config(str(PRETRAIN_CONFIG), overrides), show_progress=False)
        fresh = encode_knowledge_base(load_config(str(PRETRAIN_CONFIG), world_overrides(tmp_path) + [
            f"retrieval.index_dir={tmp_path / 'fresh'}"]), show_progress=False)
    shards = ShardPlan(sum(summary.counts.values()), 8).num_shards
    assert summary.report.skipped == [0] and summary.report.encoded == list(range(1, shards))
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == seen for p, seen in first.items()), "shard 0 was redone"
    for group in GROUPS:
        resumed, whole = open_embeddings(embeddings / group), open_embeddings(fresh.embeddings_dir / group)
        assert list(resumed.iter_ids()) == list(whole.iter_ids())
        np.testing.assert_array_equal(resumed.read_range(0, resumed.count), whole.read_range(0, whole.count))
        assert Index.load(index_dir / group).count == resumed.count


# --- non-finite losses and a full disk, through the entry point's exit path ----------------------

class InfiniteAt(toy_task.ToyLoss):
    """An infinite (not NaN) loss at the ``at``-th call."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def __call__(self, model, batch):
        loss, parts = super().__call__(model, batch)
        return (loss * float("inf"), parts) if self.calls == self.at else (loss, parts)


def run_toy(tmp_path, capsys, loss, *overrides) -> tuple[int, str]:
    """The toy task through :func:`run_main` as a script runs it: (exit code, stderr)."""
    args = ["train.max_steps=8", "train.warmup_steps=2", "train.batch_size=8", "train.save_every=3",
            "train.deterministic=false", f"run.output_dir={tmp_path / 'run'}", *overrides]
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda argv: toy_task.run(argv, loss), args)
    return exit_info.value.code, capsys.readouterr().err


def test_infinite_loss_exits_2_naming_the_step_and_the_last_good_checkpoint(tmp_path, capsys):
    code, err = run_toy(tmp_path, capsys, InfiniteAt(5))
    assert code == 2 and "Traceback" not in err
    assert "error: non-finite loss at step 5" in err and "step-00000003" in err
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000003"]
    assert not (tmp_path / "run" / "final").exists()
    assert_all_finite(tmp_path / "run")
    assert not [bar for bar in list(tqdm._instances) if bar.desc == "train"]  # closed before the message, not at exit


def test_skip_nonfinite_counts_infinite_losses_and_saves_only_finite_weights(tmp_path, capsys):
    code, _ = run_toy(tmp_path, capsys, InfiniteAt(5), "train.skip_nonfinite=true")
    assert code == 0
    import json

    state = json.loads((tmp_path / "run" / "checkpoints" / "step-00000008" / "trainer_state.json").read_text())
    assert state["skipped_steps"] == 1 and state["micro_steps"] == 9
    assert_all_finite(tmp_path / "run")


def test_every_step_non_finite_stops_with_exit_2(tmp_path, capsys, monkeypatch):
    from rablip.training import trainer

    monkeypatch.setattr(trainer, "MAX_CONSECUTIVE_SKIPS", 3)
    code, err = run_toy(tmp_path, capsys, AlwaysNaN(), "train.skip_nonfinite=true")
    assert code == 2 and "3 steps in a row" in err and "Last good checkpoint: none" in err
    assert not list((tmp_path / "run").rglob("*.safetensors"))


DiskUsage = namedtuple("DiskUsage", "total used free")


def test_full_disk_exits_2_before_training_through_run_finetune(tmp_path, capsys, monkeypatch, tiny_finetune_world):
    import run_finetune

    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(2**40, 2**40 - 2**20, 2**20))
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run_main(run_finetune.main, tiny_finetune_world.args(out))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "error: not enough disk space" in err and "run.output_dir" in err
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert left == ["checkpoints", "config.yaml"], left
