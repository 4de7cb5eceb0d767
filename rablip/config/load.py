"""Compose YAML files and command-line overrides into one validated :class:`Config`.

A config file may start with ``defaults: [model/tiny.yaml, ...]``: those files (paths relative to
the project's ``configs/`` directory, or to the including file) are merged first, in order, and
the file's own keys override them. ``key=value`` overrides on the command line come last.
``${a.b}`` interpolation is resolved after everything is merged. Relative dataset paths are then
resolved under ``data.root`` (:func:`resolve_data_paths`).

Every layer is checked against the schema as it is merged, so an error names the file (and line)
or the command-line argument it came from, and an unknown key comes with its nearest valid spelling.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rablip.config.schema import Config, ConfigValueError, schema_keys
from rablip.errors import ConfigError

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
"""The project's configs/ directory, the base for ``defaults:`` paths."""

COMMAND_LINE = "the command line"


class _Loader(yaml.SafeLoader):
    """YAML loader that reads ``1e-4`` as a float (YAML 1.1 needs a dot) and keeps line numbers."""


# YAML 1.1 reads yes/no/on/off as booleans, which would turn train.mixed_precision=no into False:
# only true/false are booleans here.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


@dataclass
class Layer:
    """One source of config values: a YAML file or the command line."""

    source: str
    values: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict)
    """Dotted key -> 1-based line in the file (YAML layers only)."""

    def where(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.source}, line {line}" if line else self.source


def parse_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    """Parse YAML text; malformed YAML becomes a ConfigError naming the file and line."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"malformed YAML in {source}{line}: {problem}. Fix the syntax there.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML in {source}: {exc}") from None
    return data, _key_lines(node)


def _key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            lines[key] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key + "."))
    return lines


def _resolve_default(entry: Any, including: Path) -> Path:
    if not isinstance(entry, str) or not entry:
        raise ConfigError(f"{including}: every entry of 'defaults:' must be a file path, got {entry!r}")
    names = [entry] if entry.endswith((".yaml", ".yml")) else [entry + ".yaml", entry]
    tried = []
    for base in (CONFIGS_DIR, including.parent):
        for name in names:
            candidate = (base / name).resolve()
            tried.append(str(candidate))
            if candidate.is_file():
                return candidate
    raise ConfigError(
        f"{including}: defaults entry {entry!r} not found (looked for {', '.join(tried)}). "
        "Paths in 'defaults:' are relative to configs/.")


def compose_files(path: str | Path, _stack: tuple[Path, ...] = ()) -> list[Layer]:
    """Layers of a config file and, first, of everything in its ``defaults:`` list (recursively)."""
    file = Path(path).resolve()
    if file in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, file))
        raise ConfigError(f"cycle in 'defaults:': {chain}. Remove one of these includes.")
    if not file.is_file():
        where = f" (included from {_stack[-1]})" if _stack else ""
        raise ConfigError(f"config file not found: {file}{where}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file} is not UTF-8 text (byte {exc.start}); save it as UTF-8.") from None
    data, lines = parse_yaml(text, str(file))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: a config file must be a mapping of sections, got {type(data).__name__}")
    defaults = data.pop("defaults", [])
    if not isinstance(defaults, list):
        raise ConfigError(f"{file}, line {lines.get('defaults', '?')}: 'defaults:' must be a list of paths")
    layers: list[Layer] = []
    for entry in defaults:
        layers.extend(compose_files(_resolve_default(entry, file), (*_stack, file)))
    layers.append(Layer(str(file), data, lines))
    return layers


def parse_override(arg: str) -> Layer:
    """``a.b=value`` -> a layer; the value is read as YAML (numbers, lists, null, nested mappings)."""
    key, sep, raw = arg.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {arg!r} on {COMMAND_LINE} is not of the form key=value (e.g. train.lr=1e-4)")
    value, _ = parse_yaml(raw, f"{COMMAND_LINE} ({arg!r})") if raw.strip() else ("", {})
    nested: dict[str, Any] = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return Layer(f"{COMMAND_LINE} ({arg!r})", nested)


def nearest_key(key: str) -> str | None:
    """The valid dotted key closest to ``key`` (same section preferred), or None."""
    keys = list(schema_keys())
    section = key.rsplit(".", 1)[0] if "." in key else ""
    same_section = [k for k in keys if k.rsplit(".", 1)[0] == section] if section else []
    for pool in (same_section, keys):
        match = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
        if match:
            return match[0]
    leaf = key.rsplit(".", 1)[-1]
    by_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    return by_leaf[0] if by_leaf else None


def _check_keys(values: dict[str, Any], layer: Layer, prefix: str = "") -> None:
    """Unknown keys -> ConfigError naming the key, where it came from and the nearest valid key."""
    valid = schema_keys()
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if dotted not in valid:
            hint = nearest_key(_first_leaf(dotted, value))
            suggestion = f"; did you mean '{hint}'?" if hint else ""
            raise ConfigError(f"unknown config key '{dotted}' in {layer.where(dotted)}{suggestion}")
        if _is_section(valid[dotted]):
            if not isinstance(value, dict):
                raise ConfigError(f"'{dotted}' in {layer.where(dotted)} is a section, not a value; "
                                  f"set its keys instead (e.g. {dotted}.<key>=...)")
            _check_keys(value, layer, dotted + ".")


def _first_leaf(dotted: str, value: Any) -> str:
    """``trian: {lr: 1}`` -> ``trian.lr``, so the suggestion can be a full key (``train.lr``)."""
    while isinstance(value, dict) and value:
        key, value = next(iter(value.items()))
        dotted = f"{dotted}.{key}"
    return dotted


def _is_section(tp: Any) -> bool:
    import dataclasses

    return dataclasses.is_dataclass(tp)


def _type_error_message(exc: OmegaConfBaseException, layer: Layer) -> str:
    key = getattr(exc, "full_key", None) or "?"
    reason = str(exc).split("\n")[0]
    return (f"bad value for config key '{key}' in {layer.where(key)}: {reason}. "
            f"Give it a value of the type the schema expects (see --print-config for the defaults).")


def _provenance(layers: list[Layer]) -> dict[str, str]:
    """Dotted key -> where its final value came from."""
    where: dict[str, str] = {}

    def walk(values: dict[str, Any], layer: Layer, prefix: str) -> None:
        for key, value in values.items():
            dotted = f"{prefix}{key}"
            where[dotted] = layer.where(dotted)
            if isinstance(value, dict):
                walk(value, layer, dotted + ".")

    for layer in layers:
        walk(layer.values, layer, "")
    return where


def merge_layers(layers: list[Layer]) -> DictConfig:
    """Merge layers over the schema's defaults, checking each one as it goes."""
    merged = OmegaConf.structured(Config)
    for layer in layers:
        _check_keys(layer.values, layer)
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(layer.values))
        except OmegaConfBaseException as exc:
            raise ConfigError(_type_error_message(exc, layer)) from None
    return merged


def build_config(layers: list[Layer]) -> Config:
    """Merge, resolve interpolations, and instantiate the typed config (running value checks)."""
    merged = merge_layers(layers)
    try:
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        where = _provenance(layers).get(key, "the config")
        raise ConfigError(f"cannot resolve interpolation of '{key}' in {where}: {str(exc).splitlines()[0]}") from None
    try:
        return resolve_data_paths(OmegaConf.to_object(merged))
    except ConfigValueError as exc:
        where = _provenance(layers).get(exc.key, "the schema defaults")
        raise ConfigError(f"bad value for config key '{exc.key}' in {where}: {exc.detail}") from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        where = _provenance(layers).get(key, "the config")
        raise ConfigError(f"bad value for config key '{key}' in {where}: {str(exc).splitlines()[0]}") from None


DATA_PATH_KEYS = (
    *(f"{split}.{key}" for split in ("train", "val", "test", "replay")
      for key in ("path", "annotations", "qtypes", "image_root", "inat_root", "inat_annotations", "landmarks_root",
                  "extra_paths", "entities", "entity_labels")),
    "extra_pairs.path", "kb.path", "kb.extra_paths", "kb.root", "kb.store_dir", "kb.webqa_images_tsv",
    "kb.evqa_image_map",
)
"""The ``data.`` keys whose relative paths resolve under ``data.root``."""


def _under_root(root: str, value: str) -> str:
    """``value`` joined to ``root`` when it is a non-empty relative path; else as it is."""
    if value and not os.path.isabs(os.path.expanduser(value)):
        return os.path.normpath(os.path.join(root, value))
    return value


def resolve_data_paths(cfg: Config) -> Config:
    """With ``data.root`` set: make it absolute and join every relative path of :data:`DATA_PATH_KEYS`
    to it (empty values and absolute paths stay). Idempotent, so a saved config.yaml loads unchanged."""
    if not cfg.data.root:
        return cfg
    root = os.path.abspath(os.path.expanduser(cfg.data.root))
    cfg.data.root = root
    for key in DATA_PATH_KEYS:
        section, name = key.rsplit(".", 1)
        owner = cfg.data
        for part in section.split("."):
            owner = getattr(owner, part)
        value = getattr(owner, name)
        if isinstance(value, list):  # a list of paths (data.kb.extra_paths, data.<split>.extra_paths)
            setattr(owner, name, [_under_root(root, each) for each in value])
        else:
            setattr(owner, name, _under_root(root, value))
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The validated config of a YAML file (with its defaults) plus ``key=value`` overrides."""
    layers = compose_files(path) if path is not None else []
    layers.extend(parse_override(arg) for arg in overrides)
    return build_config(layers)


def to_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML (what --print-config prints and config.yaml holds)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
