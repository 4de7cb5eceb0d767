"""The measurements of ``scripts/bench/scale.py`` that run in a process of their own (one model per process,
so that each peak RSS is that model's).

    python scripts/bench/scale_probe.py {load,transformers,activations} --result FILE --config CFG [key=value ...]
        [--steps N] [--questions N] [--batch B]

- ``load``: rablip's generator loaded as fine-tuning loads it (``load_generator(cfg, for_training=True)``);
  its load time and parameter counts.
- ``transformers``: transformers' own model class of the checkpoint (InstructBLIP, BLIP-2 or LLaVA) loaded in
  the run's ``model.dtype``, the same modules trained in float32 with rablip's optimizer, stepped on the
  first ``--steps`` k = 0 batches of rablip's own fine-tuning data and collator (the image slot squeezed
  out), under the same autocast;
- ``transformers_eval``: that model, freshly loaded as run_eval.py loads rablip's, answering the first
  ``--questions`` val questions with ``generate`` and the evaluation's settings, as rablip's collator packs them.
- ``activations``: bytes of the tensors saved for backward in one training forward of rablip's model, per
  example, at k = 0, 2 and 5 references (parameters excluded; storages counted once).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rablip.benchmarks import load_split  # noqa: E402
from rablip.config.load import load_config  # noqa: E402
from rablip.data.images import ImageLoader  # noqa: E402
from rablip.data.kb import KBStore  # noqa: E402
from rablip.data.samples import make_qa_sample  # noqa: E402
from rablip.models.factory import generator_family, load_generator  # noqa: E402
from rablip.models.freezing import keep_trainable_float32, weights_dtype  # noqa: E402
from rablip.models.processing import build_collator  # noqa: E402
from rablip.retrieval.references import ranked_references  # noqa: E402
from rablip.stages.finetune import FinetuneDataset, flatten_collate  # noqa: E402
from rablip.training.counterfactual import CounterfactualAnswers  # noqa: E402
from rablip.training.optim import build_optimizer  # noqa: E402
from rablip.utils.io import read_json  # noqa: E402

SLOT_TABLES = ("slot_type_embeds", "slot_position_embeds", "patch_position_embeds")
#: transformers' module names of what each family trains in the benchmark (rablip's model.trainable there)
TRAINED = {"instructblip": ("qformer.", "query_tokens", "language_projection."),
           "blip-2": ("qformer.", "query_tokens", "language_projection."),
           "llava": ("model.multi_modal_projector.",)}


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def training_batches(cfg, collator, count: int, batch: int, k: int) -> list[dict[str, torch.Tensor]]:
    """The first ``count`` batches of ``batch`` training examples at ``k`` references, as fine-tuning makes them."""
    cfg.retrieval.k = k
    kb = KBStore.open(cfg.data.kb.store_dir, root=cfg.data.kb.root or None)
    examples = load_split(cfg.data, "train")[: count * batch]
    references = ranked_references(cfg, examples, "train", Path(cfg.run.output_dir))
    dataset = FinetuneDataset(cfg, examples, kb, references, None, CounterfactualAnswers(examples, 0.0, []),
                              image_only=set())
    collate = flatten_collate(collator)
    return [collate([dataset[(i, 0)] for i in range(start, start + batch)]) for start in range(0, count * batch, batch)]


def single_image(batch: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """A k = 0 rablip batch in transformers' single-image shapes."""
    inputs = {"pixel_values": batch["pixel_values"][:, 0], "input_ids": batch["input_ids"],
              "attention_mask": batch["attention_mask"]}
    if family == "instructblip":
        inputs["qformer_input_ids"] = batch["qformer_input_ids"][:, 0]
        inputs["qformer_attention_mask"] = batch["qformer_attention_mask"][:, 0]
    if "labels" in batch:
        inputs["labels"] = batch["labels"]
    return inputs


def processor_view(checkpoint: Path, cfg) -> SimpleNamespace:
    """What :func:`build_collator` reads of a rablip model, from the checkpoint's rablip config (the collator
    is built without loading a second model)."""
    llava = read_json(checkpoint / "config.json", "checkpoint config").get("model_type") == "llava"
    fields = {"base_checkpoint": str(checkpoint)} | ({} if llava else {"multi_image": cfg.model.multi_image})
    config = generator_family(checkpoint).config_class.from_pretrained(str(checkpoint), **fields)
    view = SimpleNamespace(config=config, is_decoder_only=llava or bool(config.use_decoder_only_language_model))
    if not llava:
        view.qformer = True
    return view


def load_transformers(cfg) -> tuple[torch.nn.Module, str, float, float]:
    """transformers' own model of the checkpoint in ``model.dtype``, the benchmark's modules trainable in
    float32: (model, family, load seconds, peak RSS MiB then)."""
    import transformers

    checkpoint = Path(cfg.model.checkpoint)
    model_type = read_json(checkpoint / "config.json", "checkpoint config")["model_type"]
    family = {"instructblip": "instructblip", "blip-2": "blip-2", "llava": "llava"}[model_type]
    cls = {"instructblip": transformers.InstructBlipForConditionalGeneration,
           "blip-2": transformers.Blip2ForConditionalGeneration,
           "llava": transformers.LlavaForConditionalGeneration}[family]
    dtype = weights_dtype(cfg.model.dtype, cfg.train.mixed_precision)
    started = time.perf_counter()
    model = cls.from_pretrained(str(checkpoint), dtype=dtype)
    load_seconds = time.perf_counter() - started
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(TRAINED[family]))
    keep_trainable_float32(model)
    if "language_model" in cfg.model.gradient_checkpointing:  # as rablip's load_generator switches it on
        llm = model.model.language_model if family == "llava" else model.language_model
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, family, load_seconds, peak_rss_mib()  # as rablip's load_generator ends: trained modules float32


def measure_transformers(cfg, args) -> dict:
    model, family, load_seconds, load_rss = load_transformers(cfg)
    collator = build_collator(cfg, processor_view(Path(cfg.model.checkpoint), cfg), 0)
    batches = [single_image(b, family) for b in training_batches(cfg, collator, args.steps, args.batch, 0)]
    optimizer = build_optimizer(model, cfg.train)
    trained = [p for p in model.parameters() if p.requires_grad]
    bf16 = cfg.train.mixed_precision == "bf16"
    model.train()
    (model.model.vision_tower if family == "llava" else model.vision_model).eval()
    seconds = []
    for batch in batches:
        begin = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, cfg.train.max_grad_norm or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - begin)
    return {"load_seconds": round(load_seconds, 3), "load_peak_rss_mib": round(load_rss),
            "parameters": sum(p.numel() for p in model.parameters()),
            "step_seconds": round(statistics.median(seconds[1:] or seconds), 3), "all_step_seconds": seconds}


def measure_transformers_eval(cfg, args) -> dict:
    """In a fresh process, as run_eval.py answers: load, then ``generate`` over the questions (the first
    batch pays the same one-time kernel set-up in both)."""
    model, family, _, _ = load_transformers(cfg)
    collator = build_collator(cfg, processor_view(Path(cfg.model.checkpoint), cfg), 0)
    bf16 = cfg.train.mixed_precision == "bf16"
    model.eval()
    generate = collator.with_mode("generate")
    loader = ImageLoader(None, cfg.data.on_bad_image)
    examples = load_split(cfg.data, "val")[: args.questions]
    samples = [make_qa_sample(example, [], loader.load) for example in examples]
    kwargs = {"num_beams": cfg.eval.num_beams, "max_new_tokens": cfg.eval.max_new_tokens, "do_sample": False,
              "length_penalty": cfg.eval.length_penalty}
    begin = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(samples), args.batch):
            inputs = single_image(generate(samples[start:start + args.batch]), family)
            model.generate(**inputs, **kwargs)
    eval_seconds = time.perf_counter() - begin
    return {"eval_seconds_per_question": round(eval_seconds / len(samples), 3)}


def measure_load(cfg, args) -> dict:
    started = time.perf_counter()
    model = load_generator(cfg, for_training=True)
    seconds = time.perf_counter() - started
    tables = sum(getattr(model, name).numel() for name in SLOT_TABLES if getattr(model, name, None) is not None)
    return {"load_seconds": round(seconds, 3), "parameters": sum(p.numel() for p in model.parameters()),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "slot_table_parameters": tables}


def saved_bytes(model, batch: dict[str, torch.Tensor], bf16: bool) -> int:
    """Bytes of the distinct non-parameter storages saved for backward during one forward."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(**batch, return_logits=False)  # as the fine-tuning loss calls it
    return sum(seen.values())


def measure_activations(cfg, args) -> dict:
    model = load_generator(cfg, for_training=True)
    model.train()
    bf16 = cfg.train.mixed_precision == "bf16"
    result = {}
    for k in (0, 2, 5):
        collator = build_collator(cfg, model, k)
        batch = training_batches(cfg, collator, 1, args.batch, k)[0]
        result[f"k{k}"] = saved_bytes(model, batch, bf16) // args.batch
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("load", "transformers", "transformers_eval", "activations"))
    parser.add_argument("--result", required=True, type=Path)
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    args, overrides = parser.parse_known_args()
    cfg = load_config(args.config, overrides)
    measure = {"load": measure_load, "transformers": measure_transformers,
               "transformers_eval": measure_transformers_eval, "activations": measure_activations}
    result = measure[args.mode](cfg, args)
    args.result.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
