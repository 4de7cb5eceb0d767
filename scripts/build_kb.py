"""Build the on-disk knowledge-base store described by the config's ``data.kb`` section.

    python scripts/build_kb.py --config configs/experiment/okvqa_finetune.yaml [key=value ...]

Reads ``data.kb.path`` (and ``data.kb.extra_paths``) in ``data.kb.format`` (jsonl, wit_tsv, webqa, evqa_wiki,
m2kr_parquet: M2KR's ``*_passages`` parquet files, the OK-VQA configs' knowledge base), checks every image path against ``data.kb.root`` and every id for uniqueness, and writes the store to
``data.kb.store_dir`` (which must not exist yet, or be empty). A failed or interrupted build leaves
nothing at ``store_dir``.

WebQA (``configs/experiment/webqa_pretrain.yaml``): every text and image fact of the files once; image
facts keep their image id and are read from ``data.kb.webqa_images_tsv`` through its ``imgs.lineidx``
when used, so the TSV is not copied. Every image is checked; the unusable ones (id not in the lineidx,
truncated line, not an image) are reported with record guid and image id, and refused (exit code 2)
or left out as ``data.kb.on_missing`` (error, skip) says.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rablip.config.cli import parse_config  # noqa: E402
from rablip.data.kb import KBStore  # noqa: E402
from rablip.data.kb_build import build_kb_from_config  # noqa: E402
from rablip.utils.cli import run_main  # noqa: E402


def main(argv: list[str]) -> int:
    """Build the store and print where it is and how many items it holds."""
    cfg = parse_config(argv, description=__doc__)
    store_dir = build_kb_from_config(cfg.data.kb, show_progress=True)
    store = KBStore.open(store_dir)
    print(f"knowledge-base store {store_dir}: {len(store)} items (source {store.manifest['source']})")
    return 0


if __name__ == "__main__":
    run_main(main)
