"""Process rank helpers that work with or without torch.distributed / accelerate: the one place that
asks torch.distributed or the launcher's environment who this process is."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def _group_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank of this process: the process group's, else the launcher's ``RANK`` (0 when unset)."""
    return dist.get_rank() if _group_ready() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Processes in the job: the process group's, else the launcher's ``WORLD_SIZE`` (1 when unset)."""
    return dist.get_world_size() if _group_ready() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def process_rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1): what collective operations
    (gathers, barriers) may count on."""
    return (dist.get_rank(), dist.get_world_size()) if _group_ready() else (0, 1)


def barrier() -> None:
    """Wait for every process of the initialised process group (nothing on one process)."""
    if _group_ready():
        dist.barrier()


_groups_closed = 0


def end_distributed() -> None:
    """Close the process group at the end of a job; :func:`rablip.utils.cli.run_main` then ends the process
    without the interpreter's teardown (:func:`rablip.utils.cli.exit_without_teardown` says why)."""
    global _groups_closed
    if _group_ready():
        dist.destroy_process_group()
        _groups_closed += 1


def groups_closed() -> int:
    """How many times this process closed a process group at the end of a job (:func:`end_distributed`)."""
    return _groups_closed


def process_device() -> torch.device:
    """This process's GPU (``LOCAL_RANK``) when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
