"""`elo drain-node`'s wait (orchestrator.control.adapters.ray_nodes.drain_node) on a fake clock: the drain is asked
for first, the wait ends when the node is empty or at the deadline, and a state API that cannot answer is asked
again. The drain itself, on a real multi-node Ray cluster, is in tests/integration/test_control_adapters.py."""

from __future__ import annotations

import pytest

from orchestrator.control.adapters.ray_nodes import drain_node


class Gcs:
    """Records drain_node calls as Ray's GcsClient receives them."""

    def __init__(self, accept: bool = True) -> None:
        self.calls: list[tuple] = []
        self.accept = accept

    def drain_node(self, node_id, reason, message, deadline_ms):
        self.calls.append((node_id, reason, message, deadline_ms))
        return self.accept, "" if self.accept else "the node is not idle"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def counts(*values):
    """A replica counter answering ``values`` in turn (an exception instance is raised), the last one after."""
    seen: list[object] = list(values)

    def count(address: str, node_id: str) -> int:
        v = seen.pop(0) if len(seen) > 1 else seen[0]
        if isinstance(v, Exception):
            raise v
        return v

    return count


def test_the_wait_ends_when_the_node_hosts_no_replica():
    gcs, clock = Gcs(), Clock()
    out = drain_node(gcs, "gcs:6379", "n1", 60, clock=clock, sleep=clock.sleep, count=counts(2, 1, 1, 0))
    assert len(gcs.calls) == 1 and gcs.calls[0][0] == "n1" and gcs.calls[0][3] > 0  # a deadline in wall-clock ms
    assert (out.replicas_at_start, out.replicas_left, out.waited_s) == (2, 0, 3.0)


def test_at_the_deadline_it_returns_with_the_replicas_left():
    clock = Clock()
    out = drain_node(Gcs(), "gcs:6379", "n1", 10, clock=clock, sleep=clock.sleep, every_s=3, count=counts(1))
    assert (out.replicas_left, out.waited_s) == (1, 10.0)  # looked at 0, 3, 6, 9 and at the deadline


def test_a_state_api_error_is_asked_again_and_never_delays_the_drain():
    gcs, clock = Gcs(), Clock()
    out = drain_node(gcs, "gcs:6379", "n1", 60, clock=clock, sleep=clock.sleep,
                     count=counts(RuntimeError("state API busy"), 1, 0))
    assert len(gcs.calls) == 1 and (out.replicas_at_start, out.replicas_left) == (1, 0)
    always_down = drain_node(Gcs(), "gcs:6379", "n1", 5, clock=clock, sleep=clock.sleep,
                             count=counts(RuntimeError("state API down")))
    assert always_down.replicas_left == -1  # unknown: `elo drain-node` exits 1
    assert always_down.replicas_at_start == -1


def test_a_refused_drain_is_an_error():
    with pytest.raises(RuntimeError, match="refused to drain node n1"):
        drain_node(Gcs(accept=False), "gcs:6379", "n1", 60, count=counts(1))
