"""Load a configured split of any supported benchmark: one factory, one loader per format."""

from __future__ import annotations

from collections.abc import Callable

from rablip.config.schema import DataConfig, SplitConfig
from rablip.data.aokvqa import load_aokvqa
from rablip.data.infoseek import load_infoseek
from rablip.data.okvqa import load_okvqa
from rablip.data.records import QAExample
from rablip.data.webqa import load_webqa
from rablip.errors import ConfigError


def _okvqa(split: SplitConfig) -> list[QAExample]:
    return load_okvqa(split.path, split.annotations or None, split.image_root, split.image_split or "val2014")


def _aokvqa(split: SplitConfig) -> list[QAExample]:
    return load_aokvqa(split.path, split.image_root, split.image_split or None)


def _webqa(split: SplitConfig) -> list[QAExample]:
    return load_webqa(split.path, split.split or None)


def _infoseek(split: SplitConfig) -> list[QAExample]:
    return load_infoseek(split.path, split.qtypes or None, split.image_root, split.image_pattern)


LOADERS: dict[str, Callable[[SplitConfig], list[QAExample]]] = {
    "okvqa": _okvqa,
    "vqav2": _okvqa,
    "synthetic": _okvqa,
    "aokvqa": _aokvqa,
    "webqa": _webqa,
    "infoseek": _infoseek,
}


def load_split(data: DataConfig, split: str) -> list[QAExample]:
    """The examples of ``data.<split>`` (train, val or test) read by ``data.dataset``'s loader."""
    files: SplitConfig = getattr(data, split)
    if not files.path:
        raise ConfigError(f"data.{split}.path is empty: set the {data.dataset} file of the {split} split.")
    return LOADERS[data.dataset](files)
