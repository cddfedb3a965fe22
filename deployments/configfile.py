"""The one YAML toolkit of every config file (app, policy, simulator): strict models, and errors naming the file,
the line and the field."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

__all__ = [
    "ConfigError",
    "Problem",
    "StrictModel",
    "conflict",
    "describe",
    "duplicate_keys",
    "format_problems",
    "line_of",
    "load_model",
    "read_yaml",
]

M = TypeVar("M", bound=BaseModel)
Problem = tuple[tuple[Any, ...], str]  # (field path, message)


class ConfigError(ValueError):
    """A configuration file that cannot be used, with the file and field named."""


class StrictModel(BaseModel):
    """Base of every config-file model: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def conflict(message: str, at: tuple[str, ...], **values: Any) -> PydanticCustomError:
    """A cross-field error; ``at`` is the field path (relative to the model) the loader points the line at."""
    return PydanticCustomError("conflict", message, {**values, "at": at})


def read_yaml(path: Path, what: str = "", error: type[ConfigError] = ConfigError) -> tuple[Any, yaml.Node | None]:
    """The parsed document and its node tree (for :func:`line_of`); ``error`` naming the file (and the line)
    when it cannot be read or is not YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"{path}: cannot read{' ' + what if what else ''}: {e.strerror or e}") from e
    try:
        return yaml.safe_load(text), yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise error(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from e


def describe(err: Mapping[str, Any], model: type[BaseModel] | None = None) -> Problem:
    """One pydantic error as (field path, message), with the known fields named for an unknown one."""
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    ctx = err.get("ctx") or {}
    if err["type"] == "conflict":
        return (*loc, *ctx["at"]), err["msg"]
    if err["type"] == "extra_forbidden":
        known = _field_names(model, loc[:-1]) if model is not None else []
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        msg = f"unknown field {loc[-1]!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        return loc, msg + (f"; known fields: {', '.join(known)}" if known else "")
    if err["type"] == "missing":
        return loc, "required field is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    elif "input" in err and not isinstance(err["input"], dict | list) and "got" not in msg:
        msg += f" (got {err['input']!r})"
    return loc, msg


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Fields of the model found at ``loc`` below ``model`` (through dict values and optionals)."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return []
            tp = field.annotation
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return []
    tp = _unwrap(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _unwrap(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def duplicate_keys(node: yaml.Node | None, loc: tuple[Any, ...] = ()) -> list[Problem]:
    """Keys given twice in one mapping (YAML would silently keep the last one)."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        out: list[Problem] = []
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            if key is not None and key in seen:
                out.append(((*loc, key), f"duplicate key {key!r} (YAML would silently keep the last one)"))
            if key is not None:
                seen.add(key)
            out += duplicate_keys(v, (*loc, key))
        return out
    if isinstance(node, yaml.SequenceNode):
        return [p for i, v in enumerate(node.value) for p in duplicate_keys(v, (*loc, i))]
    return []


def line_of(root: yaml.Node | None, loc: tuple[Any, ...], last: bool = False) -> int:
    """1-based line of the deepest node of ``loc`` present in the YAML tree (the key's line for mapping entries);
    with ``last``, the last occurrence of a key (duplicate keys)."""
    if root is None:
        return 1
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            hits = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)]
            if not hits:
                return line
            k, node = hits[-1] if last else hits[0]
            line = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def format_problems(path: Path, root: yaml.Node | None, problems: list[Problem], what: str) -> str:
    """``path: invalid <what> (N problems):`` then one ``path:line: field: message`` line per problem."""
    located = sorted(
        ((line_of(root, loc, last=msg.startswith("duplicate key")), loc, msg) for loc, msg in problems),
        key=lambda x: x[0],
    )
    lines = [f"{path}: invalid {what} ({len(problems)} problem{'s' if len(problems) > 1 else ''}):"]
    for line, loc, msg in located:
        where = ".".join(str(p) for p in loc) or "(top level)"
        lines.append(f"  {path}:{line}: {where}: {msg}")
    return "\n".join(lines)


def load_model(path: str | Path, model: type[M], what: str, *, error: type[ConfigError] = ConfigError,
               prepare: Callable[[Any], Any] | None = None, context: dict[str, Any] | None = None,
               check: Callable[[M], list[Problem]] | None = None) -> M:
    """Read ``path`` and validate it as ``model``; ``prepare`` may rewrite the parsed data first and ``check``
    adds problems of its own (field path, message). Raises ``error`` naming the file, the line and the field."""
    p = Path(path)
    data, root = read_yaml(p, what, error)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(f"{p}:1: expected a mapping ({what}), got {type(data).__name__}")
    problems = duplicate_keys(root)
    if problems:
        raise error(format_problems(p, root, problems, what))
    if prepare is not None:
        data = prepare(data)
    try:
        value = model.model_validate(data, context=context)
    except ValidationError as e:
        raise error(format_problems(p, root, [describe(err, model) for err in e.errors()], what)) from e
    problems = check(value) if check is not None else []
    if problems:
        raise error(format_problems(p, root, problems, what))
    return value
