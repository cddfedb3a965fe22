"""vLLM's metric names on the edge engine, and the router's re-export of every replica's vllm:* families."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from deployments.engine_metrics import EngineMetrics, Exposition, Scraped, relabelled


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_edge_engine_metrics_use_vllms_names_labels_and_meaning() -> None:
    clock, state = Clock(), {"running": 3, "waiting": 2}
    m = EngineMetrics("elo-demo", running=lambda: state["running"], waiting=lambda: state["waiting"], clock=clock)
    arrived = clock.t
    clock.t += 0.5
    m.scheduled(arrived, prompt_tokens=40)  # waited 0.5 s in the queue
    clock.t += 0.25
    last = m.token(arrived, None)  # first token 0.75 s after arrival
    clock.t += 0.125
    m.token(arrived, last)  # the next 0.125 s later
    m.finished(arrived, "length")
    got = samples(generate_latest(m.registry).decode())
    labels = (("engine", "0"), ("model_name", "elo-demo"))
    assert got[("vllm:num_requests_running", labels)] == 3
    assert got[("vllm:num_requests_waiting", labels)] == 2
    assert got[("vllm:prompt_tokens_total", labels)] == 40
    assert got[("vllm:generation_tokens_total", labels)] == 2
    assert got[("vllm:request_success_total", (*labels[:1], ("finished_reason", "length"), labels[1]))] == 1
    assert got[("vllm:time_to_first_token_seconds_sum", labels)] == 0.75
    assert got[("vllm:inter_token_latency_seconds_sum", labels)] == 0.125
    assert got[("vllm:request_queue_time_seconds_sum", labels)] == 0.5
    assert got[("vllm:e2e_request_latency_seconds_sum", labels)] == 0.875
    assert not [k for k in got if k[0].startswith("vllm:kv_cache")]  # no paged KV cache: not claimed


def vllm_text(running: float) -> str:
    r = CollectorRegistry()
    Counter("vllm:generation_tokens", "Generation tokens.", ["model_name", "engine"], registry=r).labels(
        "elo-demo", "0").inc(running * 10)
    Counter("python_gc_collections", "Not an engine metric.", registry=r).inc()
    from prometheus_client import Gauge

    Gauge("vllm:num_requests_running", "Running.", ["model_name", "engine"], registry=r).labels(
        "elo-demo", "0").set(running)
    return generate_latest(r).decode()


def test_replicas_families_are_merged_by_name_and_labelled_with_pool_and_replica() -> None:
    router = CollectorRegistry()
    Counter("elo_requests", "Router requests.", ["pool", "status"], registry=router).labels("edge", "200").inc()
    families = relabelled([Scraped("cloud", "c1", vllm_text(2)), Scraped("edge", "e1", vllm_text(5)),
                           Scraped("edge", "e2", None), Scraped("edge", "e3", "not the exposition format {")])
    text = generate_latest(Exposition(router, families)).decode()  # type: ignore[arg-type]
    got = samples(text)
    assert text.count("# TYPE vllm:num_requests_running gauge") == 1  # one family for every replica
    running = {dict(k[1])["pool"] + "/" + dict(k[1])["replica"]: v for k, v in got.items()
               if k[0] == "vllm:num_requests_running"}
    assert running == {"cloud/c1": 2, "edge/e1": 5}
    assert got[("vllm:generation_tokens_total", (("engine", "0"), ("model_name", "elo-demo"), ("pool", "edge"),
                                                 ("replica", "e1")))] == 50
    up = {dict(k[1])["replica"]: v for k, v in got.items() if k[0] == "elo_replica_metrics_up"}
    assert up == {"c1": 1, "e1": 1, "e2": 0, "e3": 0}  # e2 did not answer, e3 answered something unreadable
    assert not [k for k in got if k[0].startswith("python_gc")]  # only engine (vllm:) families are re-exported
    assert got[("elo_requests_total", (("pool", "edge"), ("status", "200")))] == 1  # the router's own stay
