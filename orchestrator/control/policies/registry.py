"""Decide: policy names → factories, the "package.module:function" escape hatch, the guarded policy the loop runs."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from types import MappingProxyType

from orchestrator.control.config import PolicyFile
from orchestrator.control.policies.base import Policy, PolicyFactory
from orchestrator.control.policies.cost_aware import CostAware
from orchestrator.control.policies.guardrails import apply_guardrails
from orchestrator.control.policies.kpa import Kpa
from orchestrator.control.policies.queue_target import QueueTarget

# Read-only; to add a policy, pass your own mapping: {**DEFAULT_REGISTRY, "mine": my_factory}.
DEFAULT_REGISTRY: Mapping[str, PolicyFactory] = MappingProxyType({
    "cost_aware": CostAware,
    "kpa": Kpa,
    "queue_target": QueueTarget,
})


class UnknownPolicyError(LookupError):
    """A policy name that is neither registered nor an importable "package.module:function"."""


def resolve_policy(name: str, registry: Mapping[str, PolicyFactory] = DEFAULT_REGISTRY) -> PolicyFactory:
    """The factory registered as ``name``, or the callable at import path ``"package.module:attr"``."""
    if name in registry:
        return registry[name]
    if ":" not in name:
        hint = difflib.get_close_matches(name, list(registry), n=1)
        raise UnknownPolicyError(
            f"unknown policy {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; expected one of {', '.join(sorted(registry)) or '(none registered)'}, "
            "or an import path 'package.module:function'"
        )
    module_name, _, attr = name.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as e:
        raise UnknownPolicyError(f"policy {name!r}: cannot import module {module_name!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UnknownPolicyError(f"policy {name!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UnknownPolicyError(f"policy {name!r}: {attr!r} is not callable")
    return obj  # type: ignore[return-value]


def build_policy(config: PolicyFile, registry: Mapping[str, PolicyFactory] = DEFAULT_REGISTRY) -> Policy:
    """The policy the control loop runs: the configured one, wrapped by the guardrails."""
    return apply_guardrails(resolve_policy(config.policy.name, registry)(config), config)
