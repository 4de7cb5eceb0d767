"""Make a run's data ready: the synthetic world on first use, and the knowledge-base store."""

from __future__ import annotations

from pathlib import Path

from rablip.config.schema import Config
from rablip.data.kb import KBStore
from rablip.data.kb_build import build_kb_from_config
from rablip.errors import ConfigError
from rablip.utils.logging import get_logger

log = get_logger("rablip.data")
KB_MANIFEST = "kb_manifest.json"


def ensure_synthetic_world(cfg: Config) -> None:
    """Build the synthetic world into ``data.synthetic.world_dir`` unless it is already there."""
    from rablip.synthetic.world import WorldSettings, build_world

    syn = cfg.data.synthetic
    if (Path(syn.world_dir) / "world.json").is_file():
        return
    settings = WorldSettings(seed=syn.seed, entities=syn.entities,
                             distractors=None if syn.distractors < 0 else syn.distractors,
                             unseen_fraction=syn.unseen_fraction, image_size=syn.image_size,
                             train_images_per_entity=syn.train_images_per_entity,
                             eval_images_per_entity=syn.eval_images_per_entity, align_images=syn.align_images)
    manifest = build_world(syn.world_dir, settings)
    log.info("built the synthetic world at %s (%d entities)", syn.world_dir, len(manifest["entities"]))


def ensure_kb_store(cfg: Config) -> KBStore:
    """Open ``data.kb.store_dir``; a synthetic run builds it on first use, other runs are told how."""
    kb = cfg.data.kb
    if not kb.store_dir:
        raise ConfigError("data.kb.store_dir is empty: set where the knowledge-base store is (or will be built).")
    if not (Path(kb.store_dir) / KB_MANIFEST).is_file():
        if cfg.data.dataset != "synthetic":
            raise ConfigError(f"no knowledge-base store at data.kb.store_dir={kb.store_dir}; build it first with "
                              "python scripts/build_kb.py --config <this config>")
        build_kb_from_config(kb, show_progress=False)
        log.info("built the knowledge-base store at %s", kb.store_dir)
    return KBStore.open(kb.store_dir, root=kb.root or None)


def prepare_data(cfg: Config) -> None:
    """Everything that may be built on first use (call on the main process first)."""
    if cfg.data.dataset == "synthetic":
        ensure_synthetic_world(cfg)
    ensure_kb_store(cfg)
