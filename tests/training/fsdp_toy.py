"""The toy task of :mod:`tests.training.toy_task` trained the way a stage trains (``make_accelerator``,
:func:`train`, then ``write_final``, which gathers a sharded model), so that it runs under FSDP::

    accelerate launch --config_file configs/accelerate/fsdp.yaml tests/training/fsdp_toy.py key=value ...

``final/model.safetensors`` holds the full trainable weights.
"""

from __future__ import annotations

from safetensors.torch import save_file
from toy_task import build_task  # beside this script, on sys.path when it runs

from rablip.config import load_config
from rablip.stages.rundir import prepare_run_dir
from rablip.stages.runtime import make_accelerator, write_final
from rablip.training.checkpoint import trainable_state_dict
from rablip.training.trainer import train


def main(argv: list[str]) -> int:
    cfg = load_config(None, argv)
    accelerator = make_accelerator(cfg)
    with accelerator.main_process_first():
        run_dir = prepare_run_dir(cfg, accelerator.is_main_process)
    task = build_task(cfg)
    state = train(cfg, accelerator, run_dir, task.model, task.dataset, task.collate, task.loss)
    return write_final(accelerator, run_dir, lambda out: save_file(trainable_state_dict(task.model),
                                                                    str(out / "model.safetensors")),
                       f"toy training on {accelerator.distributed_type}", state.step)


if __name__ == "__main__":
    from rablip.utils.cli import run_main

    run_main(main)
