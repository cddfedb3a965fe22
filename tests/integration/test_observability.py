"""Observability of a live `elo run`, through a real Prometheus (Debian's, unpacked by scripts/install_prometheus.sh).

Prometheus scrapes the router's /metrics (elo_*, and every replica's vllm:* with pool and replica labels) and the
controller's (elo_controller_*) while the endpoint serves load, including requests a rate-limited key gets 429 for.
The Helm chart is rendered with the dashboard and the alert rules switched on, and what it renders is what is
checked: every metric a panel or rule names is exported by the live run; every panel query and annotation, and
every alert rule's comparison (as `bool`, so it returns a series whether or not it fires), returns series through
Prometheus' HTTP API; Prometheus evaluates the rules without error; `promtool check rules` passes. The series count
of every query is printed (pytest -s) and written to $ELO_OBSERVABILITY_REPORT when set.

Last, the same run's graceful drain, with request accounting: SIGTERM to `elo run` while streams are in flight
lets every one of them finish, and `elo run` exits cleanly (the run is not restarted for it: each start of vLLM
costs a minute on these cores).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import elo_run

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "k8s" / "helm" / "elo"
KEY, LIMITED_KEY, ADMIN_KEY = "obs-test-key-0001", "obs-limited-key-0001", "obs-admin-key-0001"
LIMITED_RPM = 2  # the limited key's requests per minute: the rest of its burst gets 429
WAIT_GUARD_S = 900  # a hang guard on waiting for readiness and scrapes, not a bound on speed
METRIC = re.compile(r"\b(?:elo_[a-z0-9_]+|vllm:[a-z0-9_:]+)")
LABELS = ("pool", "status", "kind", "step", "replica", "direction", "key")
COMPARISON = re.compile(r"\s(>=|<=|==|!=|>|<)\s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tool(script: str) -> str:
    proc = subprocess.run([str(ROOT / "scripts" / script)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"scripts/{script} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Rendered:
    dashboard: dict[str, Any]
    rules: dict[str, Any]  # the PrometheusRule's spec: a Prometheus rules file

    def panel_queries(self) -> list[tuple[str, str]]:
        """(panel title, PromQL) of every panel target and annotation, as Prometheus would run it."""
        out = [(f"{p['title']} [{t['refId']}]", t["expr"]) for p in self.dashboard["panels"]
               for t in p.get("targets", [])]
        out += [(f"annotation: {a['name']}", a["expr"]) for a in self.dashboard["annotations"]["list"]]
        return [(title, expr.replace("$__rate_interval", "1m").replace("$pool", ".*")) for title, expr in out]

    def alert_exprs(self) -> list[tuple[str, str]]:
        return [(r["alert"], r["expr"]) for g in self.rules["groups"] for r in g["rules"]]


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    helm = _tool("install_helm.sh")
    proc = subprocess.run([helm, "template", "elo", str(CHART), "--set", "grafana.dashboards.enabled=true",
                           "--set", "prometheusRule.enabled=true"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    objs = [o for o in yaml.safe_load_all(proc.stdout) if o]
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"  # what Grafana's sidecar selects
    (rule,) = [o for o in objs if o["kind"] == "PrometheusRule"]
    dashboard = json.loads(cm["data"]["elo-overview.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "elo-overview.json").read_text())
    return Rendered(dashboard, rule["spec"])


@dataclass(frozen=True)
class Live:
    base: str
    controller_metrics: str
    work: Path
    proc: subprocess.Popen


def _policy() -> dict[str, Any]:
    policy = yaml.safe_load((ROOT / "orchestrator" / "control" / "default_policy.yaml").read_text())
    policy["pools"]["cloud"]["min_replicas"] = 1  # a vLLM replica stays up: its own metrics are re-exported
    policy["guardrails"]["budget_usd_per_hour"] = 6.0  # so the budget gauge and its alert have a series
    return policy


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Any:
    """`elo run` (the default app config with API keys, the shipped policy with a budget), own process."""
    work = tmp_path_factory.mktemp("observability")
    app = {"router": {"auth": {"keys": [{"key": KEY, "name": "load"},
                                        {"key": LIMITED_KEY, "name": "limited", "requests_per_minute": LIMITED_RPM}]}}}
    (work / "app.yaml").write_text(yaml.safe_dump(app))
    (work / "policy.yaml").write_text(yaml.safe_dump(_policy()))
    port, metrics_port = _free_port(), _free_port()
    with elo_run(["--config", str(work / "app.yaml"), "--policy", str(work / "policy.yaml"), "--port", str(port),
                  "--metrics-port", str(metrics_port), "--admin-key", ADMIN_KEY, "--state-dir", str(work / "state"),
                  "--dashboard-port", str(_free_port()), "--ready-timeout-s", "1200"], work) as proc:
        yield Live(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", work, proc)


@pytest.fixture(scope="module")
def prometheus(live: Live, rendered: Rendered, tmp_path_factory) -> Any:
    """A real Prometheus scraping the run every second and evaluating the chart's rules."""
    tools = Path(_tool("install_prometheus.sh"))
    work = tmp_path_factory.mktemp("prometheus")
    (work / "rules.yaml").write_text(yaml.safe_dump(rendered.rules))
    router = live.base.removeprefix("http://")
    controller = live.controller_metrics.removeprefix("http://").removesuffix("/metrics")
    (work / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(work / "rules.yaml")],
        "scrape_configs": [{"job_name": "elo-router", "static_configs": [{"targets": [router]}]},
                           {"job_name": "elo-controller", "static_configs": [{"targets": [controller]}]}],
    }))
    port = _free_port()
    log = (work / "prometheus.log").open("w")
    proc = subprocess.Popen([str(tools / "prometheus"), f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _until(lambda: _get(f"{base}/-/ready") == 200, "Prometheus ready", proc, work / "prometheus.log")
        yield base, tools, work
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def _until(ok: Any, what: str, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    guard = time.monotonic() + WAIT_GUARD_S
    while not ok():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}:\n{log.read_text()[-3000:] if log else ''}")
        if time.monotonic() > guard:
            pytest.fail(f"hang guard: {what} never happened")
        time.sleep(1)


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=30)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


async def _load(base: str) -> tuple[int, int]:
    """48 streamed chats at concurrency 6 with the load key, then 6 with the limited key; (200s, 429s)."""
    ok = refused = 0
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
    limited = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=LIMITED_KEY, max_retries=0)
    gate = asyncio.Semaphore(6)

    async def chat(c: openai.AsyncOpenAI, i: int) -> None:
        nonlocal ok, refused
        async with gate:
            try:
                stream = await c.chat.completions.create(
                    model="elo-demo", messages=[{"role": "user", "content": f"Tell me about pools, take {i}."}],
                    max_tokens=48, stream=True)
                async for _ in stream:
                    pass
                ok += 1
            except openai.RateLimitError:
                refused += 1

    await asyncio.gather(*(chat(client, i) for i in range(48)))
    await asyncio.gather(*(chat(limited, i) for i in range(6)))
    return ok, refused


def _sample_names(text: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_prometheus_scrapes_a_live_run_and_every_panel_and_alert_returns_series(live: Live, rendered: Rendered,
                                                                               prometheus: Any) -> None:
    base, tools, work = prometheus
    ok, refused = asyncio.run(_load(live.base))
    assert ok == 48 + LIMITED_RPM and refused == 6 - LIMITED_RPM  # the limited key: its first 2, then 429s

    # Exported names: the router's /metrics (with the replicas' vllm:*) and the controller's.
    router_text = httpx.get(f"{live.base}/metrics", timeout=30).text
    exported = _sample_names(router_text) | _sample_names(httpx.get(live.controller_metrics, timeout=30).text)
    engine_pools = {s.labels.get("pool") for f in text_string_to_metric_families(router_text)
                    if f.name == "vllm:num_requests_running" for s in f.samples}
    assert engine_pools == {"cloud", "edge"}  # both pools' engines, under vLLM's name
    named = {m for _, e in rendered.panel_queries() + rendered.alert_exprs() for m in METRIC.findall(e)}
    assert named - exported == set(), "the dashboard or the rules name metrics the app does not export"

    # Prometheus has scraped the load (every answer, and the key's 429s) and evaluated every rule.
    _until(lambda: sum(float(s["value"][1]) for s in _query(base, 'elo_requests_total{status="200"}')) >= ok
           and sum(float(s["value"][1]) for s in _query(base, "elo_key_refused_requests_total")) >= refused,
           "Prometheus scraped every request")
    time.sleep(3)  # a few more scrapes after the last request, so every rate() window holds two samples

    def evaluated() -> list[dict[str, Any]]:
        groups = httpx.get(f"{base}/api/v1/rules", timeout=30).json()["data"]["groups"]
        return [r for g in groups for r in g["rules"]]

    _until(lambda: all(r.get("lastEvaluation", "").startswith("20") for r in evaluated()), "rules evaluated")
    rules = evaluated()
    assert {r["name"] for r in rules} == {name for name, _ in rendered.alert_exprs()}
    assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == []

    report: dict[str, Any] = {"requests": {"ok": ok, "429": refused}, "panels": {}, "alerts": {}}
    for title, expr in rendered.panel_queries():
        result = _query(base, COMPARISON.sub(r" \1 bool ", expr) if title.startswith("annotation") else expr)
        report["panels"][title] = [{k: v for k, v in s["metric"].items() if k in LABELS} for s in result]
    for name, expr in rendered.alert_exprs():
        as_bool = COMPARISON.sub(r" \1 bool ", expr)
        assert as_bool != expr, f"{name}: no comparison to evaluate as bool"
        report["alerts"][name] = [s["metric"] for s in _query(base, as_bool)]
    for title, series in report["panels"].items():
        print(f"panel {title}: {len(series)} series {series}")
    for name, series in report["alerts"].items():
        print(f"alert {name}: {len(series)} series {series}")
    if os.environ.get("ELO_OBSERVABILITY_REPORT"):
        Path(os.environ["ELO_OBSERVABILITY_REPORT"]).write_text(json.dumps(report, indent=2) + "\n")
    assert [t for t, s in report["panels"].items() if not s] == []
    assert [n for n, s in report["alerts"].items() if not s] == []
    # The limited key's 429s, counted for its name (not a pool: a key's budget is not the fleet's capacity).
    assert {(s["key"], s["status"]) for s in report["panels"]["Refused for the API key [A]"]} == {("limited", "429")}

    check = subprocess.run([str(tools / "promtool"), "check", "rules", str(work / "rules.yaml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rules)} rules found" in check.stdout


async def _stream(client: httpx.AsyncClient, url: str, started: asyncio.Event, count: list[int], n: int) -> str:
    """One greedy streamed chat of 200 tokens: complete (finish_reason and [DONE]), error (an SSE error event) or cut
    (the connection closed mid-stream)."""
    body = {"model": "elo-demo", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 200,
            "temperature": 0, "stream": True, "ignore_eos": True}
    first, finished = False, False
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    return "complete" if finished else "cut"
                event = json.loads(line[6:])
                if "error" in event:
                    return "error"
                finished = finished or any(c.get("finish_reason") for c in event["choices"])
                if not first:
                    first = True
                    count[0] += 1
                    if count[0] == n:
                        started.set()
    except httpx.HTTPError:
        pass
    return "cut"


def test_sigterm_with_streams_in_flight_lets_every_stream_finish(live: Live, prometheus: Any) -> None:
    # The module's last test: it stops the run the others used (after Prometheus' checks, which need it up).
    async def drive(n: int = 8) -> list[str]:
        started, count = asyncio.Event(), [0]
        async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10),
                                     headers={"Authorization": f"Bearer {KEY}"}) as client:
            tasks = [asyncio.create_task(_stream(client, live.base, started, count, n)) for _ in range(n)]
            await started.wait()  # every stream has its first token
            live.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    outcomes = asyncio.run(drive())
    code = live.proc.wait(300)
    # All 8 streams in flight at the signal complete: none cut, none ended by an error event.
    assert outcomes == ["complete"] * 8, outcomes
    assert code == 0 and "Stopped cleanly." in (live.work / "elo-run.log").read_text()
