"""The memory-budget table of the README: per published size, what fine-tuning holds in memory.

    python scripts/bench/memory_budget.py [--scale DIR ...] [--gpus 8] [--batch 8] [--k 2]

Per model of :data:`rablip.synthetic.published.PUBLISHED`, set up as its ``configs/model/<name>.yaml``
trains it (``model.trainable``, ``model.multi_image``, ``model.lora``): parameters and trainable
parameters counted on rablip's own model built on the meta device (no memory; LoRA adapters added by the
same code fine-tuning uses), then

- weights: frozen parameters in bf16 (2 bytes), trainable ones in float32 (4 bytes, ``model.dtype`` auto
  under bf16);
- optimizer: AdamW's two float32 moments plus the float32 gradient of every trainable parameter (12 bytes);
- activations per example at k = 0 / 2 / 5 references: the bytes saved for backward in one bf16 training
  forward, measured on CPU by ``scripts/bench/scale.py --activations`` (read from each ``DIR/scale.json``
  given with ``--scale``); "not measured" otherwise;
- one GPU: weights + optimizer + ``--batch`` x activations at ``--k``; FSDP over ``--gpus`` GPUs: weights
  and optimizer sharded (divided by the GPU count), activations not.

Every cell says whether it was measured (m) or computed (c). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rablip.models import RABlipForConditionalGeneration  # noqa: E402
from rablip.models.config import config_from_transformers  # noqa: E402
from rablip.models.llava import RablipLlavaForConditionalGeneration  # noqa: E402
from rablip.models.llava_config import llava_config_from_transformers  # noqa: E402
from rablip.models.lora import apply_lora  # noqa: E402
from rablip.synthetic.published import PUBLISHED, published_config  # noqa: E402

GIB = 1024 ** 3


def model_settings(name: str) -> dict:
    """``model.*`` of ``configs/model/<name>.yaml`` (with the schema's defaults)."""
    model = yaml.safe_load((ROOT / "configs" / "model" / f"{name}.yaml").read_text())["model"]
    return {"trainable": model.get("trainable", ["qformer", "query_tokens", "language_projection", "slot_embeddings"]),
            "multi_image": model.get("multi_image", "per_slot"), "lora": model.get("lora", {})}


def counts(name: str) -> tuple[int, int]:
    """(parameters, trainable parameters) of rablip's model of ``name`` as its config fine-tunes it."""
    settings = model_settings(name)
    config_dict = published_config(name).to_dict()
    with torch.device("meta"):
        if PUBLISHED[name].family == "llava":
            config = llava_config_from_transformers(config_dict, {"trainable_modules": settings["trainable"]})
            model = RablipLlavaForConditionalGeneration(config)
        else:
            config = config_from_transformers(config_dict, {"trainable_modules": settings["trainable"],
                                                            "multi_image": settings["multi_image"]})
            model = RABlipForConditionalGeneration(config)
        lora = settings["lora"]
        if lora.get("r"):
            apply_lora(model, lora["r"], lora.get("alpha", 16.0), lora.get("dropout", 0.05), lora["target_modules"])
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


def measured_activations(scale_dirs: list[Path]) -> dict[str, dict[str, int]]:
    """Model name -> activation bytes per example by k, from the scale.json files that hold them."""
    found = {}
    for directory in scale_dirs:
        result = json.loads((directory / "scale.json").read_text())
        if "activation_bytes_per_example" in result and not result.get("reduced"):
            found[result["model"]] = result["activation_bytes_per_example"]
    return found


def gib(value: float, how: str) -> str:
    return f"{value / GIB:.1f} GiB ({how})"


def table(scale_dirs: list[Path], gpus: int, batch: int, k: int) -> str:
    activations = measured_activations(scale_dirs)
    lines = [f"| model | parameters | trainable | weights | grads + AdamW | activations / example k=0 / 2 / 5 | "
             f"1 GPU, batch {batch}, k={k} | FSDP over {gpus} GPUs, per GPU |", "|---|---:|---:|---:|---:|---|---:|---:|"]
    for name in PUBLISHED:
        total, trainable = counts(name)
        weights = (total - trainable) * 2 + trainable * 4
        optimizer = trainable * 12
        measured = activations.get(name)
        if measured:
            per_k = " / ".join(f"{measured[f'k{each}'] / GIB:.2f}" if f"k{each}" in measured else "-"
                               for each in (0, 2, 5)) + " GiB (m)"
            act = measured[f"k{k}"] * batch
            one = gib(weights + optimizer + act, "c")
            sharded = gib((weights + optimizer) / gpus + act, "c")
        else:
            per_k = "not measured"
            one = gib(weights + optimizer, "c") + " + activations"
            sharded = gib((weights + optimizer) / gpus, "c") + " + activations"
        lines.append(f"| {name} | {total / 1e9:.3f}B (c) | {trainable / 1e6:.1f}M (c) | {gib(weights, 'c')} | "
                     f"{gib(optimizer, 'c')} | {per_k} | {one} | {sharded} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=Path, nargs="*", default=[], help="scale.py output dirs (their scale.json)")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--k", type=int, choices=(0, 2, 5), default=2)
    args = parser.parse_args(argv)
    text = table(args.scale, args.gpus, args.batch, args.k)
    print(text)
    return text


if __name__ == "__main__":
    main()
