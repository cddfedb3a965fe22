"""Decide: the contract every policy shares — the Policy protocol and the persisted PolicyState."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import TypeAdapter

from deployments.contract import RoutingPlan
from orchestrator.control.config import PolicyFile
from orchestrator.control.plan import ScalePlan
from orchestrator.control.snapshot import ClusterSnapshot

STATE_VERSION = 2


@dataclass(frozen=True)
class PoolTimers:
    """Guardrail timers of one pool (controller clock seconds; None: not running)."""

    want_up_since_s: float | None = None  # first tick of the current continuous wish to grow
    want_down_since_s: float | None = None
    last_change_s: float | None = None  # last tick the pool was resized (cooldown)


@dataclass(frozen=True)
class PolicyState:
    """Everything that spans ticks, so a restarted controller reloads it instead of forgetting it.

    ``timers`` and ``routing`` (the last routing plan sent) belong to the guardrails; ``memory`` is the wrapped
    policy's own, JSON values only (moving averages, forecasts, learned capacity, idle timers).
    """

    timers: dict[str, PoolTimers] = field(default_factory=dict)
    routing: RoutingPlan | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    version: int = STATE_VERSION

    def to_json(self) -> str:
        return _STATE_JSON.dump_json(self).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> PolicyState:
        """Parse persisted state; raises ValueError on malformed JSON or a state from another version."""
        state = _STATE_JSON.validate_json(text)
        if state.version != STATE_VERSION:
            raise ValueError(f"policy state version {state.version} is not {STATE_VERSION}; start from a fresh state")
        return state


_STATE_JSON: TypeAdapter[PolicyState] = TypeAdapter(PolicyState)


class Policy(Protocol):
    """A pure decision: same snapshot, state and ``now`` give the same plan and state. No I/O, no clock."""

    def __call__(self, snapshot: ClusterSnapshot, state: PolicyState, now: float) -> tuple[ScalePlan, PolicyState]:
        ...


# Builds a policy from the validated file. A factory may carry a pydantic ``Knobs`` model (extra="forbid"):
# the loader then checks ``policy.knobs`` against it and reports errors with their YAML line.
PolicyFactory = Callable[[PolicyFile], Policy]


def replicas_for(load: float, per_replica: float) -> int:
    """ceil(load / per_replica), tolerant of float noise (8 / (0.1 * 80) is 1, not 2)."""
    if load <= 0:
        return 0
    return max(0, math.ceil(load / per_replica - 1e-9))
