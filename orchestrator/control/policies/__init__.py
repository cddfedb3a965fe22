"""Decide: scaling policies (pure functions with explicit state), their registry and the guardrails around them."""

from orchestrator.control.policies.base import Policy, PolicyFactory, PolicyState, PoolTimers, replicas_for
from orchestrator.control.policies.cost_aware import CostAware, CostAwareKnobs
from orchestrator.control.policies.guardrails import Guarded, apply_guardrails
from orchestrator.control.policies.queue_target import QueueTarget, QueueTargetKnobs
from orchestrator.control.policies.registry import (
    DEFAULT_REGISTRY,
    UnknownPolicyError,
    build_policy,
    resolve_policy,
)

__all__ = [
    "DEFAULT_REGISTRY",
    "CostAware",
    "CostAwareKnobs",
    "Guarded",
    "Policy",
    "PolicyFactory",
    "PolicyState",
    "PoolTimers",
    "QueueTarget",
    "QueueTargetKnobs",
    "UnknownPolicyError",
    "apply_guardrails",
    "build_policy",
    "replicas_for",
    "resolve_policy",
]
