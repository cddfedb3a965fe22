"""The README's run command in elastic mode, for real: `elo run` (local Ray nodes per pool, real vLLM and
transformers replicas, the controller, API keys on) under light load, then an `elo bench serve` burst.

One scenario, measured once and asserted on (orders, counts and shares; no wall-clock bound, the figures go to
the report): under light load the edge pool serves more than 95% and cloud goes to zero; in the burst, nodes and
replicas are added while it lasts, the edge pool bridges the cloud cold start from zero, traffic reaches the
cloud pool once it is ready, every request gets 200 or a 429 with Retry-After (no 5xx, nothing lost); both pools
shrink back after. The figures are printed (pytest -s) and written to $ELO_ELASTIC_REPORT when set.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.conftest import elo_run

pytestmark = pytest.mark.integration

ELO = str(Path(sys.executable).with_name("elo"))

# Small pools so a burst of 24 concurrent requests overflows the edge pool: edge takes 4 + 4 queued per replica
# and may grow to 2 replicas (16); the cloud pool starts at zero and may grow to one replica.
APP_CONFIG = {
    "model": {"source": "demo"},
    "pools": {
        "cloud": {"engine": "vllm", "replicas": 1, "max_ongoing_requests": 8, "max_queued_requests": 8,
                  "engine_args": {"enforce_eager": True, "tool_call_parser": "xlam", "enable_auto_tool_choice": True,
                                  "max_num_seqs": 16},
                  "ray_actor_options": {"num_cpus": 0,
                                        "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}}}},
        "edge": {"engine": "transformers", "replicas": 1, "max_ongoing_requests": 4, "max_queued_requests": 4,
                 "max_batch_size": 4},
    },
    "router": {"fill_order": None, "cold_start_wait_s": 240},  # edge (CPU) first, cloud bursts
}

# The shipped policy's shape with delays short enough for a test.
POLICY = {
    "pools": {
        "cloud": {"engine": "vllm", "cost_per_hour_usd": 2.5, "min_replicas": 0, "max_replicas": 1, "startup_s": 60,
                  "target_ongoing_requests_per_replica": 8},
        "edge": {"engine": "transformers", "cost_per_hour_usd": 0.1, "min_replicas": 1, "max_replicas": 2,
                 "startup_s": 10, "target_ongoing_requests_per_replica": 4},
    },
    "slo": {"ttft_p95_s": 2.0, "e2e_p95_s": 20.0},
    "policy": {"name": "cost_aware", "knobs": {"cloud_idle_to_zero_s": 10, "rate_smoothing_s": 10,
                                               "backlog_drain_s": 10, "peak_hold_s": 20}},
    "guardrails": {"upscale_delay_s": 2, "downscale_delay_s": 15, "cooldown_s": 5, "stale_after_s": 30},
    "tick_interval_s": 2,
}

API_KEY = "elastic-test-key"  # `elo run --api-key`: /v1/* needs it; /elo/* needs the admin key elo run writes
BURST = ["-n", "480", "-c", "24", "--prompt-tokens", "32", "--output-tokens", "64"]
# Only a guard against a hang (a stuck run fails instead of blocking CI); no assertion is on how long anything took.
HANG_GUARD_S = 1800
SPILL = ["-n", "144", "-c", "24", "--prompt-tokens", "32", "--output-tokens", "64"]
LIGHT = ["-n", "60", "--rate", "1", "--prompt-tokens", "32", "--output-tokens", "16"]


def _count(bench_args: list[str]) -> int:
    return int(bench_args[bench_args.index("-n") + 1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PoolSampler(threading.Thread):
    """Polls the router's /elo/pools: (wall time, {pool: ready, starting, waiting})."""

    def __init__(self, base_url: str, admin_key: str, every_s: float = 0.5):
        super().__init__(daemon=True)
        self.base_url, self.every_s = base_url, every_s
        self.headers = {"Authorization": f"Bearer {admin_key}"}
        self.samples: list[tuple[float, dict[str, dict[str, Any]]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5, headers=self.headers) as client:
            while not self.halt.wait(self.every_s):
                try:
                    self.samples.append((time.time(), client.get(f"{self.base_url}/elo/pools").json()["pools"]))
                except (httpx.HTTPError, ValueError):
                    pass

    def first(self, predicate) -> float | None:
        return next((t for t, s in self.samples if predicate(s)), None)


def _decisions(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "decisions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _first_decision(records: list[dict[str, Any]], predicate) -> float | None:
    return next((r["wall_time_s"] for r in records if predicate(r)), None)


def _nodes(record: dict[str, Any], pool: str) -> int:
    seen = record["observed"].get(pool, {})
    return seen.get("ready_nodes", 0) + seen.get("starting_nodes", 0)


def _at_rest(record: dict[str, Any]) -> bool:
    """Cloud at zero replicas and nodes, edge at its minimum of one."""
    cloud, edge = record["observed"]["cloud"], record["observed"]["edge"]
    return (cloud["ready_replicas"] + cloud["starting_replicas"] == 0 and _nodes(record, "cloud") == 0
            and edge["ready_replicas"] == 1 and _nodes(record, "edge") == 1)


def _wait_for_rest(state_dir: Path, after_wall_s: float) -> dict[str, Any]:
    """The first decision after ``after_wall_s`` that sees the fleet at rest (or the last one, at the hang guard)."""
    guard = time.monotonic() + HANG_GUARD_S
    while True:
        later = [r for r in _decisions(state_dir) if r["wall_time_s"] > after_wall_s]
        rested = [r for r in later if _at_rest(r)]
        if rested or time.monotonic() > guard:
            return rested[0] if rested else (later or _decisions(state_dir))[-1]
        time.sleep(2)


@pytest.fixture(scope="module")
def elastic_run(tmp_path_factory, demo_model_path):
    """`elo run` with the controller on, in its own process (its own Ray cluster), stopped with SIGINT."""
    work = tmp_path_factory.mktemp("elastic")
    (work / "app.yaml").write_text(yaml.safe_dump(APP_CONFIG))
    (work / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    state_dir = work / "state"
    port = _free_port()
    args = ["--config", str(work / "app.yaml"), "--policy", str(work / "policy.yaml"), "--port", str(port),
            "--metrics-port", "0", "--state-dir", str(state_dir), "--api-key", API_KEY,
            "--dashboard-port", str(_free_port()), "--ready-timeout-s", "1200",
            # As if each pool's nodes had cores of their own: this test is about nodes and replicas coming and
            # going; on this machine's 2 shared cores the controller would rightly refuse the second edge replica
            # (that refusal is tested in tests/unit/test_shared_cores.py).
            "--cores", "16"]
    with elo_run(args, work):
        yield f"http://127.0.0.1:{port}", state_dir, work


def test_burst_with_cloud_at_zero_is_bridged_by_edge_scales_up_then_back_down(elastic_run, demo_model_path):
    base, state_dir, work = elastic_run
    admin = (state_dir / "admin-key").read_text().strip()
    # API keys are on: no key gets 401, the client key cannot reach the control endpoints, health stays open.
    assert httpx.get(f"{base}/v1/models", timeout=5).status_code == 401
    assert httpx.get(f"{base}/v1/models", timeout=5, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert httpx.get(f"{base}/elo/pools", timeout=5, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 403
    assert httpx.put(f"{base}/elo/routing", json={"fill_order": ["cloud", "edge"]}, timeout=5).status_code == 401
    assert httpx.get(f"{base}/healthz", timeout=5).status_code in (200, 503)

    # Light steady load the edge pool serves within the SLO: cloud (started with one replica) goes to zero, and
    # edge serves more than 95% of the requests.
    light = work / "light.json"
    start_light = time.time()
    done = subprocess.run([ELO, "bench", "serve", "--url", f"{base}/v1", *LIGHT, "--tokenizer", str(demo_model_path),
                           "--api-key", API_KEY, "--out", str(light), "--label", "light"],
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stdout + done.stderr
    light_summary = json.loads(light.read_text())["summary"]
    rest = _wait_for_rest(state_dir, start_light)
    assert light_summary["num_ok"] == _count(LIGHT), light_summary
    light_edge_share = light_summary["pool_counts"].get("edge", 0) / _count(LIGHT)
    assert light_edge_share > 0.95, light_summary["pool_counts"]
    assert _at_rest(rest), rest["observed"]
    pools = httpx.get(f"{base}/elo/pools", timeout=5, headers={"Authorization": f"Bearer {admin}"}).json()["pools"]
    assert pools["cloud"]["ready_replicas"] == 0 and pools["edge"]["ready_replicas"] == 1, pools
    routing = httpx.get(f"{base}/elo/routing", timeout=5, headers={"Authorization": f"Bearer {admin}"}).json()
    assert routing["fill_order"][0] == "edge", routing

    sampler = PoolSampler(base, admin)
    sampler.start()
    out = work / "burst.json"
    bench = subprocess.Popen(
        [ELO, "bench", "serve", "--url", f"{base}/v1", *BURST, "--tokenizer", str(demo_model_path),
         "--timeout-s", "300", "--api-key", API_KEY, "--out", str(out), "--records", "--label", "burst"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    # A newcomer watches the burst with `elo status`: it must show both pools and the controller's decisions.
    time.sleep(20)
    status = subprocess.run([ELO, "status", "--url", base, "--decisions", str(state_dir / "decisions.jsonl")],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    bench_out, _ = bench.communicate(timeout=900)
    assert bench.returncode == 0, bench_out
    assert status.returncode == 0 and "cloud" in status.stdout and "edge" in status.stdout, status.stdout
    assert "last controller decisions" in status.stdout, status.stdout

    report = json.loads(out.read_text())
    records = report["records"]
    t0 = dt.datetime.fromisoformat(report["params"]["started_at"]).timestamp()
    burst_end = t0 + max(r["end_s"] for r in records)

    edge_two = sampler.first(lambda s: s["edge"]["ready_replicas"] >= 2)
    decisions = _decisions(state_dir)
    cloud_asked = _first_decision(decisions, lambda r: any(c["pool"] == "cloud" and c["to"]["replicas"] >= 1
                                                           for c in r["changes"]) and r["wall_time_s"] > t0)
    # vLLM's cold start on these cores can outlast the burst the edge pool absorbs: wait for the replica asked
    # during the burst (the fleet stays warm for cloud_idle_to_zero_s), then send a second burst that exceeds
    # the edge pool's SLO-safe admission, to see the router spill to the cloud pool once it is ready.
    guard = time.monotonic() + HANG_GUARD_S
    while sampler.first(lambda s: s["cloud"]["ready_replicas"] >= 1) is None and time.monotonic() < guard:
        time.sleep(1)
    cloud_ready = sampler.first(lambda s: s["cloud"]["ready_replicas"] >= 1)
    spill = None
    # Fewer burst requests started after cloud was ready than the burst's concurrency: the burst was (nearly) over
    # by then, so it cannot show the spill; a second one does.
    late = [r for r in records if cloud_ready is not None and t0 + r["start_s"] >= cloud_ready]
    if cloud_ready is not None and len(late) < int(BURST[BURST.index("-c") + 1]):
        spill_out = work / "spill.json"
        done = subprocess.run([ELO, "bench", "serve", "--url", f"{base}/v1", *SPILL, "--tokenizer",
                               str(demo_model_path), "--api-key", API_KEY, "--out", str(spill_out), "--records",
                               "--label", "spill"], capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert done.returncode == 0, done.stdout + done.stderr
        spill = json.loads(spill_out.read_text())
        shift = dt.datetime.fromisoformat(spill["params"]["started_at"]).timestamp() - t0
        records += [{**r, "start_s": r["start_s"] + shift, "end_s": r["end_s"] + shift} for r in spill["records"]]
    print("\nburst: pools", report["summary"]["pool_counts"], "wall", round(report["summary"]["wall_s"], 1),
          "s; cloud ready at", cloud_ready and round(cloud_ready - t0, 1), "s; edge at 2 at",
          edge_two and round(edge_two - t0, 1), "s")
    for r in decisions:
        print(f"  decision t={r['wall_time_s'] - t0:+.1f}s observed=",
              {p: (v["ready_replicas"], v["starting_replicas"], v["ready_nodes"], v["starting_nodes"],
                   v["queued_requests"]) for p, v in r["observed"].items()},
              "changes=", [(c["pool"], (c["from"] or {}).get("replicas"), c["to"]["replicas"]) for c in r["changes"]])

    # Nothing lost: every request answered 200, or 429 with Retry-After; no 5xx, timeout or broken stream.
    statuses = [r["status"] for r in records]
    assert len(records) == _count(BURST) + (len(spill["records"]) if spill else 0)
    assert set(statuses) <= {200, 429}, {s: statuses.count(s) for s in set(statuses)}
    assert all(r["retry_after"] for r in records if r["status"] == 429)

    # Scale-up: while the burst lasted, the edge pool (cheapest, seconds to start) got its second replica, and the
    # cloud pool a ready replica.
    assert edge_two is not None and t0 < edge_two < burst_end
    assert cloud_asked is not None and t0 < cloud_asked < burst_end
    assert cloud_ready is not None and cloud_ready > cloud_asked
    first_up = _first_decision(decisions, lambda r: any(c["to"]["replicas"] > (c["from"] or {}).get("replicas", 0)
                                                        for c in r["changes"]))
    cloud_nodes_up = _first_decision(decisions, lambda r: r["wall_time_s"] > t0
                                     and r["observed"]["cloud"]["ready_nodes"] >= 1)
    edge_nodes_up = _first_decision(decisions, lambda r: r["wall_time_s"] > t0
                                    and r["observed"]["edge"]["ready_nodes"] >= 2)
    assert first_up is not None and cloud_nodes_up is not None and edge_nodes_up is not None

    # Cold-start bridge: requests sent while cloud was starting were served by the edge pool (or held for
    # cloud); once cloud was ready, traffic reached it.
    during = [r for r in records if t0 + r["start_s"] < cloud_ready]
    after = [r for r in records if t0 + r["start_s"] >= cloud_ready]
    edge_share_during = sum(r["pool"] == "edge" for r in during) / max(1, len(during))
    assert during and edge_share_during > 0.5
    assert any(r["pool"] == "cloud" for r in after), "no request reached the cloud pool once it was ready"

    # Scale-down after the idle period: cloud back to zero replicas and nodes, edge back to its minimum.
    load_end = max(r["end_s"] for r in records) + t0
    last = _wait_for_rest(state_dir, load_end)
    sampler.halt.set()
    sampler.join()
    decisions = _decisions(state_dir)
    assert _nodes(last, "cloud") == 0 and last["observed"]["cloud"]["ready_replicas"] == 0, last
    assert _nodes(last, "edge") == 1 and last["observed"]["edge"]["ready_replicas"] == 1, last
    scaled_down = last["wall_time_s"]

    figures = {
        "light_requests": light_summary["num_ok"], "light_edge_share": round(light_edge_share, 3),
        "light_pool_counts": light_summary["pool_counts"],
        "requests": len(records),
        "status_counts": {str(s): statuses.count(s) for s in sorted(set(statuses), key=str)},
        "lost": sum(s not in (200, 429) for s in statuses),
        "first_scale_up_decision_s": round(first_up - t0, 1),
        "edge_second_node_ready_s": round(edge_nodes_up - t0, 1),
        "edge_second_replica_ready_s": round(edge_two - t0, 1),
        "cloud_node_ready_s": round(cloud_nodes_up - t0, 1),
        "cloud_asked_s": round(cloud_asked - t0, 1),
        "cloud_replica_ready_s": round(cloud_ready - t0, 1),
        "spill_burst_pool_counts": spill["summary"]["pool_counts"] if spill else None,
        "requests_sent_during_cloud_cold_start": len(during),
        "edge_share_during_cold_start": round(edge_share_during, 3),
        "cloud_share_after_ready": round(sum(r["pool"] == "cloud" for r in after) / max(1, len(after)), 3),
        "pool_counts": report["summary"]["pool_counts"],
        "burst_s": round(burst_end - t0, 1),
        "back_to_min_after_load_s": round(scaled_down - load_end, 1),
        "ttft_p50_ms": report["summary"]["ttft"]["p50_ms"], "ttft_p95_ms": report["summary"]["ttft"]["p95_ms"],
    }
    print("\nelastic burst figures:", json.dumps(figures, indent=2))
    if os.environ.get("ELO_ELASTIC_REPORT"):
        Path(os.environ["ELO_ELASTIC_REPORT"]).write_text(json.dumps(figures, indent=2) + "\n")
