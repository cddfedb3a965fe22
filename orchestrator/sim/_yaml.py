"""Load a YAML file into a pydantic model, with errors that name the file, the line and the field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from deployments.config import ConfigError
from orchestrator.control.config import line_of
from orchestrator.control.config import read_yaml as _read_yaml

M = TypeVar("M", bound=BaseModel)


class SimConfigError(ConfigError):
    """A simulator input (sim config, profile, search space) that cannot be used; names file, line and field."""


def read_yaml(path: str | Path, what: str) -> tuple[Any, yaml.Node | None]:
    """The parsed document and its node tree (for line numbers); SimConfigError on I/O or YAML errors."""
    return _read_yaml(Path(path), what, SimConfigError)


def validation_error(path: Path, root: yaml.Node | None, e: ValidationError, what: str,
                     prefix: tuple[Any, ...] = ()) -> SimConfigError:
    """One line per problem: ``file:line: field: message``."""
    lines = [f"{path}: invalid {what}:"]
    for err in e.errors():
        loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and not isinstance(err["input"], dict | list) and "got" not in msg:
            msg += f" (got {err['input']!r})"
        where = ".".join(str(p) for p in loc) or "(top level)"
        lines.append(f"  {path}:{line_of(root, loc)}: {where}: {msg}")
    return SimConfigError("\n".join(lines))


def load_model(path: str | Path, model: type[M], what: str,
               prepare: Callable[[Any], Any] | None = None, context: dict[str, Any] | None = None) -> M:
    """Read ``path`` and validate it as ``model`` (``prepare`` may rewrite the parsed data first)."""
    p = Path(path)
    data, root = read_yaml(p, what)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SimConfigError(f"{p}:1: expected a mapping ({what}), got {type(data).__name__}")
    if prepare is not None:
        data = prepare(data)
    try:
        return model.model_validate(data, context=context)
    except ValidationError as e:
        raise validation_error(p, root, e, what) from e
