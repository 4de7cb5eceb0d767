"""make_synthetic builds every part explicitly (world, KB store, tiny checkpoint, extra pairs) and the
stages only load them; its settings are checked like the core config."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rablip.config import load_config
from rablip.data.extra_pairs import ExtraPairs
from rablip.data.prepare import prepare_data
from rablip.errors import ConfigError
from rablip.models.factory import load_generator
from rablip.synthetic.files import EXTRA_PAIRS_DIR, EXTRA_PAIRS_NAME, KB_STORE_DIR, TINY_CHECKPOINT_DIR
from rablip.synthetic.make import make_synthetic
from rablip.synthetic.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN_CONFIG = ROOT / "configs" / "experiment" / "synthetic_pretrain.yaml"
SMALL = ["world.entities=6", "world.distractors=2", "world.train_images_per_entity=1", "world.eval_images_per_entity=1",
         "world.align_images=0", "warmup.vision_steps=2", "warmup.reading_steps=2", "extra_pairs.count=10"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _cli():
    spec = importlib.util.spec_from_file_location("make_synthetic", ROOT / "scripts" / "make_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_builds_every_part_that_the_stages_then_load(tmp_path, capsys):
    world = tmp_path / "w"
    assert _cli().main(["--out", str(world), "--entities", "6", "--extra-pairs", "10", *SMALL]) == 0
    assert "built world" in capsys.readouterr().out
    assert (world / KB_STORE_DIR / "kb_manifest.json").is_file()
    assert (world / TINY_CHECKPOINT_DIR / "config.json").is_file()
    lines = (world / EXTRA_PAIRS_DIR / EXTRA_PAIRS_NAME).read_text().splitlines()
    assert len(lines) == 10 and {"image", "question", "item"} == set(json.loads(lines[0]))
    cfg = load_config(PRETRAIN_CONFIG, [f"data.root={world}"])
    prepare_data(cfg)
    generator = load_generator(cfg)
    assert generator.config.timm_model_name == "test_resnet" and generator.is_decoder_only
    pairs = ExtraPairs(cfg.data.extra_pairs.path)
    image, question, item, _ = pairs.load(0)
    assert image.size == (64, 64) and question and item.modality == "text"


def test_the_same_seed_gives_the_same_world_and_extra_pairs(tmp_path):
    settings = load_settings(None, SMALL)
    for name in ("a", "b"):
        make_synthetic(tmp_path / name, settings, parts=("world", "extra_pairs"))
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    make_synthetic(tmp_path / "c", load_settings(None, [*SMALL, "seed=1"]), parts=("world", "extra_pairs"))
    assert _tree(tmp_path / "c" / EXTRA_PAIRS_DIR) != _tree(tmp_path / "a" / EXTRA_PAIRS_DIR)


def test_a_part_is_built_only_on_an_existing_world_and_never_over_one(tmp_path):
    settings = load_settings(None, SMALL)
    with pytest.raises(Exception, match="world.json"):
        make_synthetic(tmp_path / "none", settings, parts=("kb",))
    make_synthetic(tmp_path / "w", settings, parts=("world", "kb"))
    with pytest.raises(Exception, match="exists; pass overwrite"):
        make_synthetic(tmp_path / "w", settings, parts=("kb",))
    make_synthetic(tmp_path / "w", settings, parts=("kb",), overwrite=True)
    with pytest.raises(ConfigError, match="unknown part"):
        make_synthetic(tmp_path / "w", settings, parts=("tokenizer",))


def test_stages_do_not_build_what_is_missing(tmp_path):
    make_synthetic(tmp_path / "w", load_settings(None, SMALL), parts=("world",))
    cfg = load_config(PRETRAIN_CONFIG, [f"data.root={tmp_path / 'w'}"])
    with pytest.raises(ConfigError, match="no knowledge-base store.*make_synthetic.py"):
        prepare_data(cfg)
    with pytest.raises(ConfigError, match="holds no checkpoint.*make_synthetic.py.*checkpoints/README.md"):
        load_generator(cfg)
    assert not (tmp_path / "w" / KB_STORE_DIR).exists() and not (tmp_path / "w" / TINY_CHECKPOINT_DIR).exists()


def test_settings_come_from_defaults_a_yaml_file_and_overrides_with_clear_errors(tmp_path):
    defaults = load_settings()
    assert (defaults.world.entities, defaults.warmup.vision_steps, defaults.warmup.reading_steps) == (96, 2000, 1500)
    assert (defaults.model.vision_backend, defaults.model.timm_name, defaults.model.llm_type) == (
        "timm", "test_resnet", "llama")
    path = tmp_path / "s.yaml"
    path.write_text("world:\n  entities: 20\nseed: 3\n")
    settings = load_settings(path, ["world.entities=30"])
    assert (settings.seed, settings.world.entities) == (3, 30)
    with pytest.raises(ConfigError, match="world.entitis.*did you mean 'world.entities'"):
        load_settings(None, ["world.entitis=3"])
    with pytest.raises(ConfigError, match="world.unseen_fraction: 1.5 must be in"):
        load_settings(None, ["world.unseen_fraction=1.5"])
    with pytest.raises(ConfigError, match="model.timm_name"):
        load_settings(None, ["model.timm_name="])
    with pytest.raises(ConfigError, match="warmup.vision_steps"):
        load_settings(None, ["warmup.vision_steps=-1"])


def test_print_settings_shows_every_section(capsys):
    assert _cli().main(["--print-settings", "--entities", "7", "extra_pairs.count=0"]) == 0
    out = capsys.readouterr().out
    assert "entities: 7" in out and "count: 0" in out and "vision_steps: 2000" in out
