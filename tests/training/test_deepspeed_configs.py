"""The shipped DeepSpeed accelerate configs (``configs/accelerate/deepspeed_zero{2,3}.yaml``), as far as
a CPU allows; skipped where DeepSpeed is not installed (it is the optional extra ``rablip[deepspeed]``).

Checked, for each file, in a fresh process (DeepSpeed's process group must not outlive the check): the
file goes through ``accelerate launch``'s own parsing into the environment a launched rank sees;
accelerate's ``DeepSpeedPlugin`` built from it (bf16, as rablip's ``train.mixed_precision=auto`` gives
on GPUs) carries ZeRO stage 2 / 3, bf16, gradient clipping at rablip's ``train.max_grad_norm`` default
and no gradient accumulation of its own; DeepSpeed's ``DeepSpeedConfig`` accepts it (batch sizes
filled as accelerate fills them); and ``deepspeed.initialize`` builds the ZeRO engine from it on one
CPU process (gloo), which takes one bf16 AdamW step with a finite loss and gradient norm.

Not checked: several ranks, GPUs, and rablip's trainer under DeepSpeed (accelerate ignores DeepSpeed
on CPU ranks, ``ACCELERATE_USE_CPU``, and rablip's trainer is verified for DDP and FSDP only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MICRO_BATCH = 4


def build_engine(config_file: str) -> dict:
    """Parse ``config_file`` as ``accelerate launch`` does, build the DeepSpeed engine of a tiny MLP from
    it and take one step; returns what the test checks."""
    import deepspeed
    import torch
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env
    from deepspeed.runtime.config import DeepSpeedConfig

    args = launch_command_parser().parse_args(["--config_file", config_file, "--num_processes", "1", "train.py"])
    args, defaults, precision_from_config = _validate_launch_command(args)
    # as accelerate's launch_command does before it starts DeepSpeed's launcher
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if precision_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    os.environ.update({k: v for k, v in env.items() if k.startswith("ACCELERATE_")})
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision("bf16")
    config = {**plugin.deepspeed_config, "train_micro_batch_size_per_gpu": MICRO_BATCH,
              "train_batch_size": MICRO_BATCH * plugin.deepspeed_config["gradient_accumulation_steps"]}

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("TEST_PORT", "29531"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="gloo")
    parsed = DeepSpeedConfig(config)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(),
        config={**config, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}})
    x = torch.randn(MICRO_BATCH, 8, dtype=torch.bfloat16)
    loss = engine(x).float().pow(2).mean()
    engine.backward(loss)
    engine.step()
    return {"env": {k: v for k, v in env.items() if k.startswith("ACCELERATE_")},
            "zero_stage": int(parsed.zero_optimization_stage), "bf16": parsed.bfloat16_config.enabled,
            "fp16": parsed.float16_config.enabled, "gradient_clipping": parsed.gradient_clipping,
            "gradient_accumulation_steps": parsed.gradient_accumulation_steps, "engine": type(engine).__name__,
            "optimizer": type(optimizer).__name__, "loss": float(loss.detach()),
            "grad_norm": float(engine.get_global_grad_norm()),
            "param_dtype": str(next(engine.module.parameters()).dtype)}


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_config_builds_a_zero_engine_on_cpu(stage, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional (pip install 'rablip[deepspeed]'); without it "
                                            "configs/accelerate/deepspeed_zero*.yaml are not checked")
    from rablip.config import load_config

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TEST_PORT": str(29531 + stage), "HF_HUB_OFFLINE": "1"}
    for key in ("ACCELERATE_USE_CPU", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    result = subprocess.run([sys.executable, __file__, f"configs/accelerate/deepspeed_zero{stage}.yaml"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    built = json.loads(result.stdout.strip().splitlines()[-1])
    assert built["env"]["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert built["env"]["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(stage)
    assert built["zero_stage"] == stage and built["bf16"] and not built["fp16"]
    assert built["gradient_clipping"] == load_config(None, []).train.max_grad_norm == 1.0
    assert built["gradient_accumulation_steps"] == 1  # rablip accumulates itself (train.grad_accum)
    assert built["engine"] == "DeepSpeedEngine"
    assert built["optimizer"] == ("DeepSpeedZeroOptimizer" if stage == 2 else "DeepSpeedZeroOptimizer_Stage3")
    assert built["param_dtype"] == "torch.bfloat16"
    assert built["loss"] > 0 and 0 < built["grad_norm"] < float("inf")


if __name__ == "__main__":
    print(json.dumps(build_engine(sys.argv[1])))
