"""Check that a run's data is ready before any work: the knowledge-base store must have been built."""

from __future__ import annotations

from pathlib import Path

from rablip.config.schema import Config
from rablip.data.kb import KBStore
from rablip.errors import ConfigError

KB_MANIFEST = "kb_manifest.json"


def ensure_kb_store(cfg: Config) -> KBStore:
    """Open ``data.kb.store_dir``; a ConfigError says how to build it when it is not there."""
    kb = cfg.data.kb
    if not kb.store_dir:
        raise ConfigError("data.kb.store_dir is empty: set where the knowledge-base store is (or will be built).")
    if not (Path(kb.store_dir) / KB_MANIFEST).is_file():
        raise ConfigError(f"no knowledge-base store at data.kb.store_dir={kb.store_dir}; build it first with "
                          "python scripts/build_kb.py --config <this config> (the synthetic world's: "
                          "python scripts/make_synthetic.py --out <data.root>)")
    return KBStore.open(kb.store_dir, root=kb.root or None)


def prepare_data(cfg: Config) -> None:
    """Check everything a stage reads that is built beforehand (call on the main process first)."""
    ensure_kb_store(cfg)
