"""Persistence of the controller: policy state (atomic JSON file) and the decision log (JSON lines)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from orchestrator.control.plan import ScalePlan
from orchestrator.control.policies import PolicyState
from orchestrator.control.snapshot import ClusterSnapshot

log = logging.getLogger(__name__)


class StateStore:
    """Keeps the policy state in one JSON file, replaced atomically, so a restart continues where it stopped."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> PolicyState:
        """The saved state, or a fresh one when there is none or it cannot be read (logged, never fatal)."""
        try:
            return PolicyState.from_json(self.path.read_text())
        except FileNotFoundError:
            return PolicyState()
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable policy state %s: %s; starting fresh", self.path, e)
            return PolicyState()

    def save(self, state: PolicyState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(state.to_json())
        os.replace(tmp, self.path)


def decision_record(
    at_s: float, wall_time_s: float, plan: ScalePlan, snapshot: ClusterSnapshot, cost_usd_per_hour: float,
    errors: list[str],
) -> dict[str, Any]:
    """One decision as a JSON-ready dict: what was seen, what was planned, why, and what failed."""
    return {
        "at_s": round(at_s, 3),
        "wall_time_s": round(wall_time_s, 3),
        "reason": plan.reason,
        "targets": {p: asdict(t) for p, t in plan.targets.items()},
        "changes": [{"pool": c.pool, "from": asdict(c.current) if c.current else None, "to": asdict(c.target)}
                    for c in plan.changes(snapshot)],
        "drain": list(plan.drain),
        "preferred_pool_by_class": dict(plan.preferred_pool_by_class),
        "cost_usd_per_hour": round(cost_usd_per_hour, 4),
        "observed": {p: asdict(s) for p, s in snapshot.pools.items()},
        "metrics_age_s": round(snapshot.metrics_age_s, 3),
        "errors": errors,
    }


class DecisionLog:
    """Appends decisions to a JSON-lines file; reads the last ones back for `elo status`."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")

    def tail(self, n: int) -> list[dict[str, Any]]:
        return list(self._read())[-n:] if n > 0 else []

    def _read(self) -> Iterator[dict[str, Any]]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                yield json.loads(line)
            except ValueError:  # a line cut by a crash mid-write
                continue
