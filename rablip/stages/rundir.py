"""The run directory: created once, holding the resolved config that started it."""

from __future__ import annotations

from pathlib import Path

import yaml

from rablip.config.load import to_yaml
from rablip.config.schema import Config
from rablip.errors import ConfigError
from rablip.utils.io import atomic_write_text

CONFIG_NAME = "config.yaml"
_IGNORED_IN_COMPARISON = {("run", "resume"), ("run", "overwrite")}


def _flatten(values: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between two config dicts (run.resume/overwrite ignored)."""
    ignored = {".".join(k) for k in _IGNORED_IN_COMPARISON}
    a, b = _flatten(saved), _flatten(current)
    return sorted(k for k in set(a) | set(b) if k not in ignored and a.get(k, "<unset>") != b.get(k, "<unset>"))


def prepare_run_dir(cfg: Config, is_main: bool = True) -> Path:
    """Create ``run.output_dir`` and write the resolved config to ``config.yaml`` in it.

    A non-empty directory is accepted when its saved config equals this one, when
    ``run.resume=true`` (the saved config may differ: e.g. more steps) or ``run.overwrite=true``.
    Otherwise the run is refused before anything is written, naming the differing keys.
    """
    out = Path(cfg.run.output_dir)
    text = to_yaml(cfg)
    saved_path = out / CONFIG_NAME
    if out.exists() and not out.is_dir():
        raise ConfigError(f"run.output_dir {out} exists and is not a directory; choose another run.output_dir.")
    if out.is_dir() and any(out.iterdir()) and not (cfg.run.resume or cfg.run.overwrite):
        if not saved_path.is_file():
            raise ConfigError(
                f"run.output_dir {out} is not empty and holds no {CONFIG_NAME} (not a rablip run). "
                "Choose an empty directory, or pass run.overwrite=true to use it anyway.")
        try:
            saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the saved config {saved_path}: {exc}") from None
        diff = config_differences(saved, yaml.safe_load(text))
        if diff:
            shown = ", ".join(diff[:10]) + (" ..." if len(diff) > 10 else "")
            raise ConfigError(
                f"run.output_dir {out} holds a run with a different config (differs in: {shown}). "
                "Pass run.resume=true to continue it, run.overwrite=true to replace it, "
                "or choose another run.output_dir.")
    if is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(saved_path, text)
        except OSError as exc:
            raise ConfigError(f"cannot write to run.output_dir {out}: {exc.strerror}. "
                              "Choose a writable directory.") from None
    return out
