"""Typed configuration: schema, YAML composition with overrides, sweeps."""

from rablip.config.load import load_config, to_dict, to_yaml
from rablip.config.schema import Config

__all__ = ["Config", "load_config", "to_dict", "to_yaml"]
