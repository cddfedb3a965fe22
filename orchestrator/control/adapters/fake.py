"""Act, in tests: recording fakes of the actuator protocols — they keep state, record calls and inject errors.

The control loop's unit tests (and the simulator) use these instead of Ray: same contract as the real
adapters (idempotent, move toward a target, drain before removing, only project errors), no I/O. Time comes
from an injected clock, so "a node takes 90 s to join" is a fake-clock fact, not a sleep.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from orchestrator.control.adapters.base import NodeInfo, choose_scale_down
from orchestrator.control.errors import CapacityUnavailableError, NotFoundError

Clock = Callable[[], float]


class Call(NamedTuple):
    """One recorded call: method name and positional arguments, e.g. ``Call("resize", ("cloud", 2))``."""

    method: str
    args: tuple[Any, ...]


class _Recorder:
    """Call log, write log and the queue of errors to raise next."""

    def __init__(self) -> None:
        self.calls: list[Call] = []  # every call, failed ones included, in order
        self.writes: list[Call] = []  # calls that changed state: what a real adapter would have sent
        self._errors: deque[tuple[str | None, BaseException]] = deque()

    def fail_next(self, error: BaseException, method: str | None = None) -> None:
        """Raise ``error`` from the next call (of ``method`` only, if given) instead of acting. Queues in order."""
        self._errors.append((method, error))

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def _enter(self, method: str, *args: Any) -> None:
        self.calls.append(Call(method, args))
        for i, (wanted, error) in enumerate(self._errors):
            if wanted is None or wanted == method:
                del self._errors[i]
                raise error

    def _wrote(self, method: str, *args: Any) -> None:
        self.writes.append(Call(method, args))


def _known(pools: Mapping[str, Any], pool: str, kind: str) -> None:
    if pool not in pools:
        raise NotFoundError(f"no {kind} for pool {pool!r}; known pools: {', '.join(sorted(pools)) or '(none)'}")


class FakeReplicaScaler(_Recorder):
    """In-memory :class:`~orchestrator.control.adapters.base.ReplicaScaler`.

    Replicas asked for become ready ``startup_s`` after the ask on ``clock`` (at once with the defaults), or
    when :meth:`make_ready` is called. Scale-down drops starting replicas first, then ready ones.
    """

    def __init__(self, replicas: Mapping[str, int] | Iterable[str] = (), *, clock: Clock = lambda: 0.0,
                 startup_s: float = 0.0) -> None:
        super().__init__()
        initial = dict(replicas) if isinstance(replicas, Mapping) else dict.fromkeys(replicas, 0)
        self._clock = clock
        self.startup_s = startup_s
        self._ready: dict[str, int] = dict(initial)
        self._pending: dict[str, list[float]] = {pool: [] for pool in initial}  # ask times of starting replicas

    @property
    def targets(self) -> dict[str, int]:
        """Current target per pool (ready + starting)."""
        return {pool: self._ready[pool] + len(self._pending[pool]) for pool in self._ready}

    def set_replicas(self, pool: str, replicas: int) -> None:
        self._enter("set_replicas", pool, replicas)
        _known(self._ready, pool, "deployment")
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        self._advance(pool)
        pending = self._pending[pool]
        current = self._ready[pool] + len(pending)
        if replicas == current:
            return
        if replicas > current:
            pending.extend([self._clock()] * (replicas - current))
        else:
            drop = current - replicas
            from_pending = min(drop, len(pending))
            del pending[len(pending) - from_pending:]  # newest asks go first
            self._ready[pool] -= drop - from_pending
        self._wrote("set_replicas", pool, replicas)
        self._advance(pool)

    def get_replicas(self, pool: str) -> tuple[int, int]:
        self._enter("get_replicas", pool)
        _known(self._ready, pool, "deployment")
        self._advance(pool)
        return self._ready[pool], len(self._pending[pool])

    def make_ready(self, pool: str) -> None:
        """Test control: every starting replica of ``pool`` is ready now."""
        self._ready[pool] += len(self._pending[pool])
        self._pending[pool].clear()

    def _advance(self, pool: str) -> None:
        now = self._clock()
        pending = self._pending[pool]
        done = [t for t in pending if t + self.startup_s <= now]
        if done:
            self._ready[pool] += len(done)
            pending[:] = [t for t in pending if t + self.startup_s > now]


@dataclass
class _FakeNode:
    node_id: str
    pool: str
    started_at_s: float
    ready_at_s: float | None = None
    draining: bool = False

    def info(self) -> NodeInfo:
        state = "draining" if self.draining else ("ready" if self.ready_at_s is not None else "starting")
        return NodeInfo(self.node_id, self.pool, state, self.started_at_s, self.ready_at_s)


class FakePoolBackend(_Recorder):
    """In-memory :class:`~orchestrator.control.adapters.base.PoolBackend` following the shared drain rule.

    Nodes join ``startup_s`` after they are asked for on ``clock`` (at once with the defaults). Which nodes
    host replicas is test input: :meth:`host` sets how many live replicas a node has; a node hosting any is
    drained, never removed. ``max_nodes`` caps a pool: asking for more starts up to the cap and raises
    :class:`~orchestrator.control.errors.CapacityUnavailableError`.
    """

    def __init__(self, nodes: Mapping[str, int] | Iterable[str] = (), *, clock: Clock = lambda: 0.0,
                 startup_s: float = 0.0, max_nodes: Mapping[str, int] | None = None) -> None:
        super().__init__()
        initial = dict(nodes) if isinstance(nodes, Mapping) else dict.fromkeys(nodes, 0)
        self._clock = clock
        self.startup_s = startup_s
        self.max_nodes = dict(max_nodes or {})
        self._nodes: dict[str, dict[str, _FakeNode]] = {pool: {} for pool in initial}
        self._seq = 0
        self.hosted: dict[str, int] = {}  # node_id -> live replicas on it (test input)
        self.removed: list[str] = []  # node ids removed, in order
        self._startups: dict[str, deque[float]] = {pool: deque(maxlen=5) for pool in initial}
        now = clock()
        for pool, count in initial.items():
            for _ in range(count):  # pre-existing nodes: ready, not measured
                node = self._new_node(pool, now)
                node.ready_at_s = now

    def list_nodes(self, pool: str) -> list[NodeInfo]:
        self._enter("list_nodes", pool)
        _known(self._nodes, pool, "node group")
        self._advance(pool)
        return [n.info() for n in self._nodes[pool].values()]

    def resize(self, pool: str, nodes: int) -> None:
        self._enter("resize", pool, nodes)
        _known(self._nodes, pool, "node group")
        if nodes < 0:
            raise ValueError(f"nodes must be >= 0, got {nodes}")
        self._advance(pool)
        members = self._nodes[pool]
        choice = choose_scale_down([n.info() for n in members.values()], nodes, self.hosted)
        changed = False
        for node in members.values():
            draining = node.node_id in choice.drain
            changed |= node.draining != draining
            node.draining = draining
        for node_id in choice.remove:
            del members[node_id]
            self.hosted.pop(node_id, None)
            self.removed.append(node_id)
            changed = True
        missing = nodes - len(members)
        cap = self.max_nodes.get(pool)
        allowed = missing if cap is None else max(0, min(missing, cap - len(members)))
        for _ in range(allowed):
            self._new_node(pool, self._clock())
            changed = True
        if changed:
            self._wrote("resize", pool, nodes)
        self._advance(pool)
        if allowed < missing:
            raise CapacityUnavailableError(
                f"pool {pool!r} is capped at {cap} nodes; {nodes} asked, {len(members)} there")

    def measured_startup_s(self, pool: str) -> float | None:
        self._enter("measured_startup_s", pool)
        _known(self._nodes, pool, "node group")
        self._advance(pool)
        samples = self._startups[pool]
        return sum(samples) / len(samples) if samples else None

    def host(self, node_id: str, replicas: int) -> None:
        """Test control: ``node_id`` now hosts ``replicas`` live replicas (0: idle, removable)."""
        if not any(node_id in members for members in self._nodes.values()):
            raise KeyError(f"no node {node_id!r}")
        self.hosted[node_id] = replicas

    def _new_node(self, pool: str, now: float) -> _FakeNode:
        self._seq += 1
        node = _FakeNode(f"{pool}-{self._seq}", pool, now)
        self._nodes[pool][node.node_id] = node
        return node

    def _advance(self, pool: str) -> None:
        now = self._clock()
        for node in self._nodes[pool].values():
            if node.ready_at_s is None and node.started_at_s + self.startup_s <= now:
                node.ready_at_s = node.started_at_s + self.startup_s
                self._startups[pool].append(self.startup_s)


__all__ = ["Call", "FakePoolBackend", "FakeReplicaScaler"]
