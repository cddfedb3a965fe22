"""Persistence of the controller: policy state (atomic JSON file) and the decision log (JSON lines)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from orchestrator.control.plan import ScalePlan
from orchestrator.control.policies import PolicyState
from orchestrator.control.snapshot import ClusterSnapshot, PoolSnapshot

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
        "details": dict(plan.details or {}),
        "routing": plan.routing.model_dump(mode="json") if plan.routing else None,
        "cost_usd_per_hour": round(cost_usd_per_hour, 4),
        "observed": {p: _observed(s) for p, s in snapshot.pools.items()},
        "metrics_age_s": round(snapshot.metrics_age_s, 3),
        "errors": errors,
        "refused": dict(plan.refused or {}),
    }


def _observed(pool: PoolSnapshot) -> dict[str, Any]:
    """A pool as seen, JSON-ready; the router's per-concurrency samples are summarised (they are in its window)."""
    out = {f.name: getattr(pool, f.name) for f in fields(pool) if f.name not in ("by_concurrency", "admission")}
    out["samples"] = sum(c.requests for c in pool.by_concurrency)
    out["admission"] = pool.admission.model_dump(mode="json") if pool.admission is not None else None
    return out


class DecisionLog:
    """Appends decisions to a JSON-lines file, rotated at ``max_bytes`` (one previous file, ``.1``, is kept); reads
    the last ones back for `elo status` from the file's end, not the whole file."""

    def __init__(self, path: Path, max_bytes: int = 16 * 1024 * 1024):
        self.path = Path(path)
        self.max_bytes = max_bytes

    def append(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, separators=(",", ":")) + "\n"
        try:
            if self.path.stat().st_size + len(line) > self.max_bytes:
                self.path.replace(self.path.with_name(self.path.name + ".1"))
        except FileNotFoundError:
            pass
        with self.path.open("a") as f:
            f.write(line)

    def tail(self, n: int) -> list[dict[str, Any]]:
        if n <= 0:
            return []
        out = list(self._read_back(self.path, n))
        if len(out) < n:  # just rotated: the rest from the previous file
            out = list(self._read_back(self.path.with_name(self.path.name + ".1"), n - len(out))) + out
        return out

    @staticmethod
    def _read_back(path: Path, n: int, block: int = 65536) -> Iterator[dict[str, Any]]:
        """The last ``n`` parseable records of ``path``, reading blocks from its end."""
        try:
            f = path.open("rb")
        except FileNotFoundError:
            return
        with f:
            end = f.seek(0, 2)
            data, pos = b"", end
            while pos > 0 and data.count(b"\n") <= n:
                step = min(block, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
        lines = data.splitlines()
        if pos > 0:
            lines = lines[1:]  # the first line may be cut by the block boundary
        records = []
        for line in reversed(lines):
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut by a crash mid-write
                continue
            if len(records) == n:
                break
        yield from reversed(records)
