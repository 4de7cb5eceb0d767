"""Benchmark: time of one fine-tuning step at k retrieved items, with and without the feature cache,
against transformers' own InstructBlipForConditionalGeneration at k = 0.

    python scripts/bench/train_step.py [--size tiny|medium] [--ks 0 1 3 5] [--batch 4] [--rounds 7]
        [--warmup 2] [--threads 2] [--seed 0]

Builds, in a temporary directory: tokenizers trained on random texts, an InstructBLIP checkpoint of
``--size`` (random weights, saved in the transformers layout), a KB store of image+text items (PNG
files), and the feature cache of that store (``rablip.training.feature_cache``, the real build).
rablip's model and transformers' model load the same checkpoint; both train what RA-BLIP trains
(Q-Former, query tokens, projection; rablip also its slot tables), the vision encoder and the LLM
are frozen, the frozen vision tower in eval mode.

Batches come from the real collator: ``--batch`` questions, each with k image+text references
(decoded images, or with the cache their cached features via ``make_qa_sample(item_features=...)``).
transformers gets the k = 0 batch's single image slot. A step is forward + backward + AdamW step on
a ready batch (collation is timed apart, per batch). All variants run in every round, in an order
that rotates from round to round, so that the shared machine's load falls on all alike; after
``--warmup`` rounds each variant's median over ``--rounds`` is reported. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import BlipImageProcessor, InstructBlipForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rablip.data.images import ImageLoader  # noqa: E402
from rablip.data.kb import KBStore  # noqa: E402
from rablip.data.kb_writer import build_kb_store  # noqa: E402
from rablip.data.records import KBItem, QAExample  # noqa: E402
from rablip.data.samples import make_qa_sample  # noqa: E402
from rablip.models import RABlipForConditionalGeneration  # noqa: E402
from rablip.models.processing import Collator  # noqa: E402
from rablip.synthetic.build import build_tiny_checkpoint  # noqa: E402
from rablip.synthetic.tokenizer_training import train_tokenizer  # noqa: E402
from rablip.training.feature_cache import open_or_build  # noqa: E402

TRAINABLE = ["qformer", "query_tokens", "language_projection", "slot_embeddings"]
"""RA-BLIP's fine-tuning: vision encoder and LLM frozen."""

SIZES = {
    # the synthetic experiments' model (configs/model/tiny.yaml)
    "tiny": {"image_size": 64, "patch_size": 8, "vision": (64, 2, 4, 128), "qformer": (64, 2, 4, 128, 1),
             "queries": 8, "t5": (64, 2, 4, 128)},
    # ViT-S-like vision tower at 224 px (197 patches), 32 queries, a small T5
    "medium": {"image_size": 224, "patch_size": 16, "vision": (384, 6, 6, 1536), "qformer": (384, 4, 6, 1536, 2),
               "queries": 32, "t5": (384, 4, 6, 1536)},
}


def architecture(size: str) -> dict:
    """``build_tiny_checkpoint``'s architecture dict for a named size."""
    spec = SIZES[size]
    width, layers, heads, mlp = spec["vision"]
    q_width, q_layers, q_heads, q_mlp, cross = spec["qformer"]
    t_width, t_layers, t_heads, t_mlp = spec["t5"]
    return {
        "vision": {"hidden_size": width, "intermediate_size": mlp, "num_hidden_layers": layers,
                   "num_attention_heads": heads, "image_size": spec["image_size"], "patch_size": spec["patch_size"]},
        "qformer": {"hidden_size": q_width, "intermediate_size": q_mlp, "num_hidden_layers": q_layers,
                    "num_attention_heads": q_heads, "cross_attention_frequency": cross, "vocab_size": 0,
                    "max_position_embeddings": 512, "encoder_hidden_size": width},
        "text": {"model_type": "t5", "vocab_size": 0, "d_model": t_width, "d_kv": t_width // t_heads, "d_ff": t_mlp,
                 "num_layers": t_layers, "num_decoder_layers": t_layers, "num_heads": t_heads,
                 "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1, "dropout_rate": 0.1},
        "num_query_tokens": spec["queries"],
    }


def random_words(rng: np.random.Generator, count: int) -> list[str]:
    syllables = ["ka", "lo", "mi", "ren", "sa", "tor", "vel", "qu", "dan", "pe", "ri", "zo", "ba", "nu"]
    return ["".join(rng.choice(syllables, size=rng.integers(2, 4))) for _ in range(count)]


def make_world(work: Path, rng: np.random.Generator, items: int, questions: int) -> tuple[KBStore, list[QAExample]]:
    """A KB store of image+text items with PNG files and questions with PNG images."""
    words = random_words(rng, 300)

    def sentence(n: int) -> str:
        return " ".join(rng.choice(words, size=n))

    def image(path: Path) -> str:
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(path)
        return path.name

    root = work / "kb_root"
    root.mkdir()
    kb_items = [KBItem(id=f"item-{i}", modality="image+text", image=image(root / f"item{i}.png"),
                       title=sentence(2), text=sentence(24)) for i in range(items)]
    store = KBStore.open(build_kb_store(kb_items, work / "kb_store", kb_root=root, show_progress=False))
    (work / "questions").mkdir()
    examples = [QAExample(id=f"q{i}", image=str(work / "questions" / image(work / "questions" / f"q{i}.png")),
                          question="what is the " + sentence(6) + " ?", answers=[sentence(2)])
                for i in range(questions)]
    return store, examples


def build_models(work: Path, size: str, store: KBStore, examples: list[QAExample], seed: int):
    """Tokenizers, the checkpoint, rablip's and transformers' models, the collator."""
    corpus = [f"{item.title} {item.text}" for batch in store.iter_batches() for item in batch]
    corpus += [f"{ex.question} {ex.answers[0]}" for ex in examples] + ["reference short answer question"]
    llm_tokenizer = train_tokenizer(corpus, work / "llm_tok", kind="t5", vocab_size=1000)
    qformer_tokenizer = train_tokenizer(corpus, work / "qf_tok", kind="bert", vocab_size=1000)
    checkpoint = build_tiny_checkpoint(work / "checkpoint", architecture(size), tokenizer=llm_tokenizer,
                                       qformer_tokenizer=qformer_tokenizer, seed=seed)
    ours = RABlipForConditionalGeneration.from_pretrained(str(checkpoint), trainable_modules=TRAINABLE)
    theirs = InstructBlipForConditionalGeneration.from_pretrained(str(checkpoint))
    for name, parameter in theirs.named_parameters():
        parameter.requires_grad_(name.startswith(("qformer.", "query_tokens", "language_projection.")))
    side = SIZES[size]["image_size"]
    processor = BlipImageProcessor(size={"height": side, "width": side})
    collator = Collator(qformer_tokenizer, llm_tokenizer, processor, num_query_tokens=ours.config.num_query_tokens,
                        is_encoder_decoder=True, max_references=5, max_input_length=1024, max_target_length=16,
                        qformer_max_length=96)
    return ours, theirs, collator, processor


def training_mode(model: torch.nn.Module) -> torch.nn.Module:
    """Train mode with the frozen vision tower in eval mode (as rablip's model keeps it)."""
    model.train()
    model.vision_model.eval()
    return model


def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> float:
    """One fine-tuning step; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    return float(loss.detach())


TRANSFORMERS_KEYS = ("pixel_values", "qformer_input_ids", "qformer_attention_mask", "input_ids", "attention_mask",
                     "labels")


def single_slot(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A one-slot (k = 0) rablip batch in transformers InstructBLIP's shapes."""
    out = {key: batch[key] for key in TRANSFORMERS_KEYS}
    out["pixel_values"] = out["pixel_values"][:, 0]
    out["qformer_input_ids"] = out["qformer_input_ids"][:, 0]
    out["qformer_attention_mask"] = out["qformer_attention_mask"][:, 0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 1, 3, 5])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if 0 not in args.ks or max(args.ks) > 5:
        parser.error("--ks must include 0 and stay <= 5 (the collator's max_references)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rablip-bench-step-") as tmp:
        work = Path(tmp)
        store, examples = make_world(work, rng, items=max(args.ks) * args.batch + 4, questions=args.batch)
        ours, theirs, collator, processor = build_models(work, args.size, store, examples, args.seed)
        build_started = time.perf_counter()
        cache = open_or_build(work / "features", ours, processor, store, show_progress=False)
        cache_seconds = time.perf_counter() - build_started
        print(f"setup {time.perf_counter() - started:.1f} s (feature cache of {len(cache)} images: "
              f"{cache_seconds:.2f} s)", file=sys.stderr)

        questions, items = ImageLoader(None), ImageLoader(store.root)
        ids = list(store.ids())

        def collate(k: int, cached: bool) -> dict[str, torch.Tensor]:
            samples = []
            for index, example in enumerate(examples):
                item_ids = ids[index * k:(index + 1) * k]
                features = cache.features_of(item_ids) if cached else None
                samples.append(make_qa_sample(example, store.get_many(item_ids), questions.load,
                                              load_item_image=items.load, item_features=features))
            return collator(samples)

        variants = [("rablip", k, False) for k in args.ks] + [("rablip", k, True) for k in args.ks if k > 0]
        variants.append(("transformers", 0, False))
        batches = {v: collate(v[1], v[2]) for v in variants}
        batches[("transformers", 0, False)] = single_slot(batches[("rablip", 0, False)])
        models = {"rablip": training_mode(ours), "transformers": training_mode(theirs)}
        optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
                      for name, m in models.items()}
        with torch.no_grad():
            same_loss = (float(ours.eval()(**batches[("rablip", 0, False)]).loss),
                         float(theirs.eval()(**batches[("transformers", 0, False)]).loss))
        training_mode(ours)
        training_mode(theirs)

        step_times: dict[tuple, list[float]] = {v: [] for v in variants}
        collate_times: dict[tuple, list[float]] = {v: [] for v in variants if v[0] == "rablip"}
        vision_times: list[float] = []
        question_pixels = batches[("transformers", 0, False)]["pixel_values"]
        for round_index in range(args.warmup + args.rounds):
            shift = round_index % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                name = variant[0]
                if variant == variants[0]:  # the vision tower alone on the batch's question images
                    tick = time.perf_counter()
                    with torch.no_grad():
                        ours.encode_images(question_pixels)
                    if round_index >= args.warmup:
                        vision_times.append(time.perf_counter() - tick)
                if name == "rablip":
                    tick = time.perf_counter()
                    collate(variant[1], variant[2])
                    if round_index >= args.warmup:
                        collate_times[variant].append(time.perf_counter() - tick)
                tick = time.perf_counter()
                step(models[name], optimizers[name], batches[variant])
                if round_index >= args.warmup:
                    step_times[variant].append(time.perf_counter() - tick)

    median = {v: statistics.median(t) for v, t in step_times.items()}
    base = median[("rablip", 0, False)]
    print(f"## Fine-tuning step, {args.size} model, batch {args.batch}\n")
    print(f"torch {torch.__version__}, {args.threads} threads (torch.set_num_threads), {os.cpu_count()} CPUs, "
          f"{platform.machine()}; median of {args.rounds} steps after {args.warmup} warm-up rounds; "
          f"k=0 loss rablip {same_loss[0]:.6f} / transformers {same_loss[1]:.6f}; "
          f"whole run {time.perf_counter() - started:.0f} s\n")
    print("| model | k | feature cache | LLM input tokens | step ms (median) | step / rablip k=0 step | "
          "collate ms (median) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for variant in variants:
        name, k, cached = variant
        tokens = batches[variant]["input_ids"].shape[1]
        ratio = median[variant] / base
        collate_ms = f"{1000 * statistics.median(collate_times[variant]):.1f}" if variant in collate_times else "-"
        print(f"| {name} | {k} | {'yes' if cached else 'no'} | {tokens} | {1000 * median[variant]:.1f} | "
              f"{ratio:.2f} | {collate_ms} |")
    theirs_k0 = median[("transformers", 0, False)]
    per_image = statistics.median(vision_times) / args.batch
    print(f"\nvision tower forward alone: {1000 * per_image:.1f} ms per image ({per_image * args.batch / base:.2f} "
          "of the rablip k=0 step for the batch's question images)")
    print(f"rablip k=0 / transformers k=0: {base / theirs_k0:.3f}")
    if 3 in args.ks:
        print(f"k=3 / k=0 without cache: {median[('rablip', 3, False)] / base:.2f}; "
              f"with cache: {median[('rablip', 3, True)] / base:.2f}")


if __name__ == "__main__":
    main()
