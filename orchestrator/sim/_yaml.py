"""Load a YAML file into a pydantic model, with errors that name the file, the line and the field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from deployments.config import ConfigError

M = TypeVar("M", bound=BaseModel)


class SimConfigError(ConfigError):
    """A simulator input (sim config, profile, search space) that cannot be used; names file, line and field."""


def read_yaml(path: str | Path, what: str) -> tuple[Any, yaml.Node | None]:
    """The parsed document and its node tree (for line numbers); SimConfigError on I/O or YAML errors."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SimConfigError(f"{p}: cannot read {what}: {e.strerror or e}") from e
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        raise SimConfigError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from e
    return data, root


def line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """1-based line of the deepest node of ``loc`` found in the YAML tree (1 when unknown)."""
    if root is None:
        return 1
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            hit = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
            key = next((k for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
            if hit is None or key is None:
                return line
            node, line = hit, key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


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
