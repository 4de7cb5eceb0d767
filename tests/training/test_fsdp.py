"""FSDP on two real CPU ranks (gloo), started the way a user starts it on GPUs: ``accelerate launch
--config_file configs/accelerate/fsdp.yaml`` (FSDP2, full sharding, the model's own layer classes as
units). accelerate alone runs DDP on CPU ranks; rablip's ``make_accelerator`` turns FSDP on.

- the toy task trains to the losses and weights of one process with the same global batch;
- ``run_finetune.py`` trains to the losses and weights of a DDP run with the same ranks (one process
  differs on the tiny world already at step 1: each rank's loss is a mean over its own tokens, and the
  logged loss is the mean of the ranks' means, not the mean over all tokens);
- checkpoints are sharded (one weights and one optimizer file per rank, slices that make up the full
  weights); rank 0 SIGKILLed while writing one, the run resumes to the uninterrupted run's losses and
  byte-identical ``final/``, which holds full tensors and loads with ``from_pretrained``.

Tolerances: 2 ranks differ from one process (or from DDP) only in the order of float32 additions
(each rank's mean, then reduce-scatter vs all-reduce), about 1e-7 relative per step; rel 1e-5 over 6
steps leaves room for growth without hiding a wrong average (a factor of 2 or a rank's batch missing).
"""

from pathlib import Path

import accelerate.commands.launch
import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file

from rablip.errors import RablipError
from rablip.models.rablip import RABlipForConditionalGeneration
from rablip.training.checkpoint import load_checkpoint
from tests.retrieval.tiny_world import FINETUNE_WORLD, build_world
from tests.training.launch import (
    FINETUNE,
    ROOT,
    checkpoint_steps,
    final_bytes,
    finetune_args,
    metrics_lines,
    run,
)

LAUNCH = accelerate.commands.launch.__file__
FSDP_CONFIG = "configs/accelerate/fsdp.yaml"
CPU_RANKS = ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
TOY = str(ROOT / "tests/training/fsdp_toy.py")
KILLPOINT = str(ROOT / "tests/reliability/killpoint.py")
SHORT = ("train.max_steps=6",)  # checkpoints at steps 2, 4 and 6 (finetune_args: save_every 2)
SHARD_FILES = {f"{stem}-rank{r:05d}-of-00002.safetensors" for stem in ("model", "optimizer") for r in (0, 1)}


def fsdp(script: str, args: list[str], timeout: float = 120):
    """``accelerate launch --config_file configs/accelerate/fsdp.yaml`` with two CPU ranks."""
    return run(LAUNCH, ["--config_file", FSDP_CONFIG, *CPU_RANKS, script, *args], timeout=timeout)


def losses(run_dir):
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in metrics_lines(run_dir)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    return build_world(root / "world", *FINETUNE_WORLD)


@pytest.fixture(scope="module")
def fsdp_run(world):
    """An uninterrupted FSDP fine-tuning run of 6 steps."""
    out = world.parent / "fsdp"
    result = fsdp(FINETUNE, finetune_args(world, out, *SHORT))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def assert_same_training(expected_run: Path, run_dir: Path) -> None:
    """Six steps with the same losses and gradient norms (rel 1e-5: float32 summation order) and the same
    final trainable weights."""
    expected, got = losses(expected_run), losses(run_dir)
    assert list(got) == list(range(1, 7))
    for step, (loss, grad_norm) in expected.items():
        assert got[step] == (pytest.approx(loss, rel=1e-5), pytest.approx(grad_norm, rel=1e-5)), step
    a, b = load_file(str(expected_run / "final/model.safetensors")), load_file(str(run_dir / "final/model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape and torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-6), name


def test_toy_task_under_fsdp_matches_one_process(tmp_path):
    base = ["train.max_steps=6", "train.warmup_steps=2", "train.lr=0.05", "train.save_every=3", "log.every=1",
            "train.grad_accum=2"]  # gradient accumulation: FSDP2's no_sync
    one = run(TOY, [*base, "train.batch_size=8", f"run.output_dir={tmp_path / 'one'}"])
    assert one.returncode == 0, one.stderr[-2000:]
    two = fsdp(TOY, [*base, "train.batch_size=4", f"run.output_dir={tmp_path / 'two'}"])
    assert two.returncode == 0, two.stderr[-3000:]
    assert "toy training on DistributedType.FSDP" in two.stderr  # not DDP
    assert {p.name for p in (tmp_path / "two/checkpoints/step-00000006").glob("*-rank*")} == SHARD_FILES
    assert_same_training(tmp_path / "one", tmp_path / "two")


def test_finetune_under_fsdp_matches_ddp_on_the_same_ranks(world, fsdp_run):
    ddp = world.parent / "ddp"
    result = run(FINETUNE, finetune_args(world, ddp, *SHORT), processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_training(ddp, fsdp_run)


def test_checkpoints_are_sharded_slices_of_the_full_weights(fsdp_run):
    assert checkpoint_steps(fsdp_run) == [4, 6]  # keep_last 2
    last = fsdp_run / "checkpoints/step-00000006"
    assert {p.name for p in last.iterdir()} == SHARD_FILES | {"optimizer.json", "rng.json", "rng.safetensors",
                                                              "trainer_state.json"}
    slices = [load_file(str(last / f"model-rank{r:05d}-of-00002.safetensors")) for r in (0, 1)]
    final = load_file(str(fsdp_run / "final/model.safetensors"))
    assert slices[0].keys() == slices[1].keys() and set(final) <= set(slices[0])
    assert any(slices[1][name].shape != final[name].shape for name in final)  # really sharded
    for name, full in final.items():  # FSDP2 shards dim 0: the slices in rank order make up the tensor
        assert torch.equal(torch.cat([slices[0][name], slices[1][name]]), full), name
    optimizer = load_file(str(last / "optimizer-rank00001-of-00002.safetensors"))
    assert any(key.endswith(".exp_avg") for key in optimizer)


def test_sigkill_of_rank0_while_checkpointing_then_resume_is_bit_identical(world, fsdp_run, tmp_path):
    out = tmp_path / "killed"
    # rank 0 dies before writing its slice of step 4 (rank 1 may have written its own): a power cut.
    killed = fsdp(KILLPOINT, ["--target", "rablip.training.checkpoint.save_file", "--match",
                              "step-00000004-sharded/model-rank00000", "--", FINETUNE,
                              *finetune_args(world, out, *SHORT)])
    assert killed.returncode != 0 and "Signal 9 (SIGKILL) received" in killed.stderr, killed.stderr[-3000:]
    assert checkpoint_steps(out) == [2] and not (out / "final").exists()
    assert (out / "checkpoints/.tmp-step-00000004-sharded").is_dir()  # half written, never counted

    resumed = fsdp(FINETUNE, finetune_args(world, out, *SHORT, "run.resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(step 2)" in resumed.stderr
    assert final_bytes(out) == final_bytes(fsdp_run)
    assert losses(out) == losses(fsdp_run)  # exactly: same ranks, same reduction order
    assert checkpoint_steps(out) == [4, 6] and not (out / "checkpoints/.tmp-step-00000004-sharded").exists()


def test_final_export_holds_full_weights_and_loads(world, fsdp_run):
    model = RABlipForConditionalGeneration.from_pretrained(str(fsdp_run / "final"))
    base = RABlipForConditionalGeneration.from_pretrained(str(world / "tiny-instructblip-llama"))
    saved = load_file(str(fsdp_run / "final/model.safetensors"))
    params, base_params = dict(model.named_parameters()), dict(base.named_parameters())
    assert saved and all(params[name].shape == base_params[name].shape for name in saved)
    for name, tensor in saved.items():
        assert torch.equal(params[name], tensor), name
    assert any(not torch.equal(params[name], base_params[name]) for name in saved)  # it trained


def test_resuming_with_another_layout_is_refused(fsdp_run):
    with pytest.raises(RablipError, match="sharded by 2 FSDP processes, this run is not sharded"):
        load_checkpoint(fsdp_run / "checkpoints/step-00000006", torch.nn.Linear(2, 2), None)


def test_per_family_fsdp_files_name_layer_classes_of_the_installed_transformers():
    modules = [transformers.models.instructblip.modeling_instructblip, transformers.models.blip_2.modeling_blip_2,
               transformers.models.t5.modeling_t5, transformers.models.llama.modeling_llama,
               transformers.models.opt.modeling_opt, transformers.models.clip.modeling_clip]
    files = sorted((ROOT / "configs/accelerate").glob("fsdp*.yaml"))
    assert len(files) == 5
    for path in files:
        fsdp_config = yaml.safe_load(path.read_text())["fsdp_config"]
        assert fsdp_config["fsdp_version"] == 2 and fsdp_config["fsdp_reshard_after_forward"] is True
        assert f"--config_file configs/accelerate/{path.name}" in path.read_text()
        if path.name == "fsdp.yaml":  # the model's own _no_split_modules, those it contains
            assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp_config
            continue
        for name in fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","):
            assert any(isinstance(getattr(m, name, None), type) for m in modules), (path.name, name)
