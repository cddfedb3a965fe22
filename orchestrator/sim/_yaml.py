"""The simulator's inputs through the project's one YAML toolkit: errors name the file, the line and the field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel

from deployments.configfile import ConfigError, line_of
from deployments.configfile import load_model as _load_model
from deployments.configfile import read_yaml as _read_yaml

__all__ = ["SimConfigError", "line_of", "load_model", "read_yaml"]

M = TypeVar("M", bound=BaseModel)


class SimConfigError(ConfigError):
    """A simulator input (sim config, profile, search space) that cannot be used; names file, line and field."""


def read_yaml(path: str | Path, what: str) -> tuple[Any, yaml.Node | None]:
    """The parsed document and its node tree (for line numbers); SimConfigError on I/O or YAML errors."""
    return _read_yaml(Path(path), what, SimConfigError)


def load_model(path: str | Path, model: type[M], what: str,
               prepare: Callable[[Any], Any] | None = None, context: dict[str, Any] | None = None) -> M:
    """Read ``path`` and validate it as ``model`` (``prepare`` may rewrite the parsed data first)."""
    return _load_model(path, model, what, error=SimConfigError, prepare=prepare, context=context)
