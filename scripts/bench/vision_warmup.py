"""Benchmark: which tiny vision encoder learns the synthetic world's visible attributes from the
viewing warm-up, and does it tell them on entities it has never seen?

    python scripts/bench/vision_warmup.py [--steps 1500] [--entities 96] [--seed 0] [--work DIR]
        [--encoders vit test_resnet] [--pool 1024]

Builds a synthetic world (in ``--work``, temporary by default), then for each encoder runs the warm-up
the tiny generator gets when it is built (:func:`rablip.synthetic.vision_warmup.warm_up_vision_model` on
:func:`rablip.synthetic.viewing.viewing_batches`: invented creatures, none with a world entity's
looks, same seed, same steps). Then a linear probe of the frozen encoder's features, fitted on new
invented creatures, is scored on the world's test images, split by whether the pictured entity is
seen in training questions or not. ``vit`` is InstructBLIP's vision
tower at the sizes of ``configs/model/tiny.yaml`` before it switched to timm (64 wide, 2 layers,
patch 8); the others are timm architectures, projected to 64. One torch thread. Prints a Markdown
table of accuracies in percent and the seconds each warm-up took.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import BlipImageProcessor, InstructBlipVisionConfig, InstructBlipVisionModel

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rablip.models.vision import TimmVisionEncoder  # noqa: E402
from rablip.synthetic.files import annotations_name, image_relpath, load_manifest  # noqa: E402
from rablip.synthetic.tiny_model import CLIP_MEAN, CLIP_STD  # noqa: E402
from rablip.synthetic.viewing import POOL, attribute_label, class_counts, viewing_batches  # noqa: E402
from rablip.synthetic.vision_warmup import AttributeHeads, attribute_loss, warm_up_vision_model  # noqa: E402
from rablip.synthetic.vocab import VISUAL_ATTRIBUTES  # noqa: E402
from rablip.synthetic.world import WorldSettings, build_world  # noqa: E402

WIDTH, IMAGE_SIZE = 64, 64


def build_encoder(name: str) -> torch.nn.Module:
    if name == "vit":
        return InstructBlipVisionModel(InstructBlipVisionConfig(
            hidden_size=WIDTH, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            image_size=IMAGE_SIZE, patch_size=8, initializer_range=0.02))
    return TimmVisionEncoder(name, WIDTH)


def test_images(world: Path) -> tuple[list[Image.Image], torch.Tensor, list[bool]]:
    """Each test image once, with its entity's attribute labels and whether that entity is seen."""
    entities = {entity["id"]: entity for entity in load_manifest(world)["entities"]}
    annotations = json.loads((world / annotations_name("test")).read_text())["annotations"]
    first = {}
    for annotation in annotations:
        first.setdefault(annotation["image_id"], annotation["entity_id"])
    images = [Image.open(world / image_relpath("test", image_id)).convert("RGB") for image_id in sorted(first)]
    looks = [entities[first[image_id]]["attributes"] for image_id in sorted(first)]
    seen = [entities[first[image_id]]["role"] == "seen" for image_id in sorted(first)]
    return images, torch.tensor([attribute_label(look) for look in looks]), seen


@torch.no_grad()
def accuracies(model: AttributeHeads, pixel_values: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> list:
    model.eval()
    logits = model(pixel_values[rows])
    return [100.0 * float((head.argmax(1) == labels[rows, i]).float().mean()) for i, head in enumerate(logits)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--entities", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None)
    parser.add_argument("--encoders", nargs="+", default=["vit", "test_resnet"])
    parser.add_argument("--pool", type=int, default=POOL,
                        help="renderings drawn once and sampled (0: every batch rendered anew)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="rablip-bench-vision-"))
    world = work / "world"
    if not (world / "world.json").is_file():
        build_world(world, WorldSettings(seed=args.seed, entities=args.entities))
    processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                   image_mean=CLIP_MEAN, image_std=CLIP_STD)
    images, labels, seen = test_images(world)
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    seen_rows = torch.tensor(seen)
    avoid = [entity["attributes"] for entity in load_manifest(world)["entities"]]
    names = list(VISUAL_ATTRIBUTES)
    print(f"{args.steps} warm-up steps, seed {args.seed}; test images: {int(seen_rows.sum())} of seen entities, "
          f"{int((~seen_rows).sum())} of unseen ones\n")
    print("| encoder | parameters | entities | " + " | ".join(names) + " | warm-up s |")
    print("|---|---:|---|" + "---:|" * (len(names) + 1))
    for name in args.encoders:
        torch.manual_seed(args.seed)
        encoder = build_encoder(name)
        started = time.perf_counter()
        batches = viewing_batches(args.seed, 32, IMAGE_SIZE, avoid, pool=args.pool)
        warm_up_vision_model(encoder, processor, WIDTH, class_counts(), batches, args.steps, seed=args.seed,
                             show_progress=False)
        seconds = time.perf_counter() - started
        # a linear probe of the frozen features (what the Q-Former reads), fitted on new invented creatures
        heads = AttributeHeads(encoder, WIDTH, class_counts())
        encoder.requires_grad_(False)
        fit_probe(heads, processor, viewing_batches(args.seed + 1, 32, IMAGE_SIZE, avoid, pool=0))
        params = sum(p.numel() for p in encoder.parameters())
        for group, rows in (("seen", seen_rows), ("unseen", ~seen_rows)):
            cells = " | ".join(f"{value:.1f}" for value in accuracies(heads, pixel_values, labels, rows))
            print(f"| {name} | {params:,} | {group} | {cells} | {seconds:.0f} |", flush=True)
    return 0


def fit_probe(heads: AttributeHeads, processor, batches, steps: int = 300) -> None:
    """Fit the linear heads alone (encoder frozen) on new invented creatures."""
    optimizer = torch.optim.AdamW(heads.heads.parameters(), lr=1e-2)
    heads.train()
    heads.vision_model.eval()
    for _ in range(steps):
        images, labels = next(batches)
        logits = heads(processor(images=images, return_tensors="pt")["pixel_values"])
        loss = attribute_loss(logits, torch.tensor(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
