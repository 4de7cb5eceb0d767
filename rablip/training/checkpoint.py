"""Training checkpoints: everything needed to continue a run bit-exactly, in safetensors and JSON.

A checkpoint is a directory ``<run>/checkpoints/step-XXXXXXXX`` holding

- ``model.safetensors``: the trainable weights;
- ``optimizer.safetensors`` + ``optimizer.json``: AdamW's tensors and its param groups;
- ``rng.safetensors`` + ``rng.json``: torch (CPU and CUDA), numpy and python generator states;
- ``trainer_state.json``: step, samples seen, best metric so far, skipped steps (written last).

It is written into a temporary sibling directory and renamed into place, so a process killed while
writing leaves the previous checkpoints untouched and no directory that looks complete. A checkpoint
of the same step that is written again (a SIGTERM right after a periodic save) first moves the old
one aside (``.old-step-XXXXXXXX``, still a valid checkpoint until the new one is in place), and a
checkpoint is deleted state file first, so a kill at any moment leaves every directory that looks
complete readable. Nothing is unpickled on load.

A model sharded by FSDP2 (its parameters are DTensors) gets a sharded checkpoint: each process writes
its own slices of the weights and of the optimizer state (``model-rank00000-of-00002.safetensors``,
``optimizer-rank...``) and reads them back on resume, so it resumes with the same number of processes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch < 2.5
    from torch.distributed._tensor import DTensor

from rablip.errors import RablipError
from rablip.utils.io import atomic_write_json, replace_directory

CHECKPOINTS = "checkpoints"
PREFIX = "step-"
ASIDE = ".old-"
"""Prefix of a checkpoint moved aside while the same step is written again."""
STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    step: int = 0
    """Optimizer steps done."""
    micro_steps: int = 0
    """Micro-batches drawn so far (the data position; skipped steps draw too)."""
    samples_seen: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    skipped_steps: int = 0
    """Steps skipped for a non-finite loss (train.skip_nonfinite)."""
    history: list[dict] = field(default_factory=list)
    """Evaluation results so far (step and metrics)."""


@dataclass(frozen=True)
class Shards:
    """This process among the processes of a model sharded by FSDP2, each holding a slice of every
    sharded parameter; ``barrier`` waits for all of them."""

    rank: int
    world: int
    barrier: Callable[[], None]

    def file(self, stem: str) -> str:
        return f"{stem}-rank{self.rank:05d}-of-{self.world:05d}.safetensors"


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP2 shards ``model`` (some of its parameters are DTensors)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This process's slice of a DTensor; any other tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"{PREFIX}{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (their state file exists), oldest first.

    A checkpoint moved aside for a re-save of its step stands in for it when the process was killed
    before the new one was renamed into place.
    """
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    complete = [p for p in root.iterdir() if p.is_dir() and (p / STATE_FILE).is_file()]
    by_step = {p.name: p for p in complete if p.name.startswith(PREFIX)}
    for aside in complete:
        if aside.name.startswith(ASIDE + PREFIX):
            by_step.setdefault(aside.name[len(ASIDE):], aside)
    return [by_step[name] for name in sorted(by_step)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (and nothing else), detached and contiguous, on CPU."""
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def _local_trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: local_tensor(p).detach().to("cpu").contiguous()
            for name, p in model.named_parameters() if p.requires_grad}


@contextmanager
def full_weights(model: torch.nn.Module, is_main: bool) -> Iterator[None]:
    """Within the block, the main process's ``model`` holds every parameter that FSDP2 shards as its full
    tensor (on CPU), so that its ``state_dict()`` and ``save_pretrained`` write full weights; the
    sharded parameters are put back afterwards. A collective: every process enters it (nothing
    happens for a model that is not sharded). Parameters tied to each other stay tied."""
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
    full: dict[int, torch.nn.Parameter | None] = {}
    try:
        with torch.no_grad():
            for module in model.modules():  # the same order on every process, so the gathers pair up
                for name, param in list(module._parameters.items()):
                    if not isinstance(param, DTensor):
                        continue
                    if id(param) not in full:
                        gathered = param.full_tensor()
                        full[id(param)] = torch.nn.Parameter(gathered.to("cpu"), requires_grad=param.requires_grad) \
                            if is_main else None
                    if is_main:
                        swapped.append((module, name, param))
                        module._parameters[name] = full[id(param)]
        yield
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = local_tensor(value).detach().to("cpu").contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _as_dtensors(state: dict, optimizer: torch.optim.Optimizer) -> None:
    """Make this process's slices of a sharded optimizer state DTensors laid out as their parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]  # the state dict's numbering
    for index, values in state["state"].items():
        param = params[index]
        if not isinstance(param, DTensor):
            continue
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and name != "step" and value.shape == param.to_local().shape:
                values[name] = DTensor.from_local(value.to(param.device), param.device_mesh, param.placements,
                                                  shape=param.shape, stride=param.stride())


def _rng_to_files() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    meta = {"numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(py_state), gauss]}
    return tensors, meta


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, py_state, gauss = meta["python"]
    random.setstate((version, tuple(py_state), gauss))


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: TrainerState, keep_last: int, shards: Shards | None = None) -> Path:
    """Write a checkpoint of ``state.step`` atomically and prune old ones (the best one is kept).

    With ``shards`` (a model sharded by FSDP2) every process calls it and writes its slices of the
    weights and optimizer state; rank 0 writes the rest and renames the directory into place once all
    slices are written."""
    final = checkpoint_dir(run_dir, state.step)
    main = shards is None or shards.rank == 0
    tmp = final.with_name(f".tmp-{final.name}-{'sharded' if shards else os.getpid()}")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    try:
        tensors, meta = _optimizer_to_files(optimizer)
        if shards is None:
            save_file(trainable_state_dict(model), str(tmp / "model.safetensors"))
            save_file(tensors, str(tmp / "optimizer.safetensors"))
        else:
            shards.barrier()  # the directory exists
            save_file(_local_trainable(model), str(tmp / shards.file("model")))
            save_file(tensors, str(tmp / shards.file("optimizer")))
            shards.barrier()  # every slice is written
        if main:
            atomic_write_json(tmp / "optimizer.json", meta, indent=None)
            rng_tensors, rng_meta = _rng_to_files()
            save_file(rng_tensors, str(tmp / "rng.safetensors"))
            atomic_write_json(tmp / "rng.json", rng_meta, indent=None)
            atomic_write_json(tmp / STATE_FILE, asdict(state))
            # A re-save of the same step (e.g. SIGTERM right after a periodic save) moves the old one aside.
            replace_directory(tmp, final, final.with_name(ASIDE + final.name), remove=remove_checkpoint)
    except OSError as exc:  # disk full, quota, permissions: say where, keep the earlier checkpoints
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise RablipError(f"cannot write the checkpoint {final}: {exc.strerror or exc}. Earlier checkpoints are "
                          "intact; free space (or fix the directory), then continue with run.resume=true.") from None
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if main:
        _prune(run_dir, keep_last, state.best_step)
    return final


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint directory, its state file first: a process killed while deleting never
    leaves a directory that looks complete but lacks its weights."""
    if path.is_dir():
        (path / STATE_FILE).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)


def _prune(run_dir: Path, keep_last: int, best_step: int | None) -> None:
    complete = list_checkpoints(run_dir)
    keep = {p.name.removeprefix(ASIDE) for p in complete[-max(1, keep_last):]}
    if best_step is not None:
        keep.add(checkpoint_dir(run_dir, best_step).name)
    for path in complete:
        if path.name.removeprefix(ASIDE) not in keep:
            remove_checkpoint(path)
    standing_in = set(complete)
    root = Path(run_dir) / CHECKPOINTS
    for leftover in [*root.glob(".tmp-*"), *root.glob(ASIDE + "*")]:
        if leftover not in standing_in:
            remove_checkpoint(leftover)


def _check_layout(path: Path, shards: Shards | None) -> None:
    """Refuse a sharded checkpoint for an unsharded model and the other way round, or other process counts."""
    written = sorted(path.glob("model-rank*-of-*.safetensors"))
    wanted = shards.file("model") if shards else "model.safetensors"
    if (path / wanted).is_file() or not written and not (path / "model.safetensors").is_file():
        return  # a missing file is reported as unreadable
    was = f"sharded by {int(written[0].stem.rsplit('-of-', 1)[1])} FSDP processes" if written else "not sharded"
    now = f"sharded by {shards.world} FSDP processes" if shards else "not sharded"
    raise RablipError(f"checkpoint {path} was written {was}, this run is {now}; resume with the launch "
                      "(FSDP or not, number of processes) that wrote it")


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    shards: Shards | None = None) -> TrainerState:
    """Restore weights, optimizer and RNG states from a checkpoint (this process's slices of a sharded
    one with ``shards``); returns the trainer state."""
    path = Path(path)
    _check_layout(path, shards)
    model_file, optimizer_file = (shards.file("model"), shards.file("optimizer")) if shards else (
        "model.safetensors", "optimizer.safetensors")
    try:
        state = TrainerState(**json.loads((path / STATE_FILE).read_text(encoding="utf-8")))
        weights = load_file(str(path / model_file))
        optimizer_files = (load_file(str(path / optimizer_file)),
                           json.loads((path / "optimizer.json").read_text(encoding="utf-8")))
        rng_files = (load_file(str(path / "rng.safetensors")), json.loads((path / "rng.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise RablipError(f"checkpoint {path} cannot be read ({exc}); delete it to resume from an earlier one") from None
    trainable = dict(model.named_parameters())
    expected = {n for n, p in trainable.items() if p.requires_grad}
    if set(weights) != expected:
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise RablipError(f"checkpoint {path} does not fit this model's trainable parameters "
                          f"(missing: {missing[:10]}, unexpected: {unexpected[:10]}); was model.trainable changed?")
    with torch.no_grad():
        for name, value in weights.items():
            local_tensor(trainable[name]).copy_(value)
    if optimizer is not None:
        optimizer_state = _optimizer_from_files(*optimizer_files)
        if shards is not None:
            _as_dtensors(optimizer_state, optimizer)
        optimizer.load_state_dict(optimizer_state)
    _restore_rng(*rng_files)
    return state


def write_final_dir(final_dir: Path, save: Callable[[Path], None]) -> None:
    """Write the final model with ``save(directory)`` into a temporary sibling, then rename it into place
    (an earlier final model is renamed aside first and deleted last, so no half-deleted one is ever at
    ``final_dir``)."""
    tmp = final_dir.with_name(f".tmp-{final_dir.name}")
    aside = final_dir.with_name(f".old-{final_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save(tmp)
        replace_directory(tmp, final_dir, aside)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
