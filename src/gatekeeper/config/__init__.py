"""Configuration: frozen model, strict YAML loader and hot reload."""

from gatekeeper.config.loader import load_config, parse_config
from gatekeeper.config.model import Config, Route, Upstream

__all__ = ["Config", "Route", "Upstream", "load_config", "parse_config"]
