"""One real Serve app (vLLM CPU replica + transformers replica on the demo model) shared by integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deployments.config import DEFAULT_VLLM_ARGS, AppConfig, Eligibility, ModelConfig, PoolConfig, RouterConfig

VLLM_CPU_OPTIONS = {"num_cpus": 0, "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}}}

# Small limits so tests can saturate pools with a few dozen requests:
# cloud takes 8 at once and queues 16 more; edge takes 4 and queues 8. Total room: 36.
TEST_CONFIG = AppConfig(
    model=ModelConfig(source="demo"),
    pools={
        "cloud": PoolConfig(engine="vllm", max_ongoing_requests=8, max_queued_requests=16,
                            engine_args={**DEFAULT_VLLM_ARGS, "max_num_seqs": 16},
                            ray_actor_options=VLLM_CPU_OPTIONS),
        "edge": PoolConfig(engine="transformers", max_ongoing_requests=4, max_queued_requests=8, max_batch_size=4,
                           eligibility=Eligibility(max_prompt_tokens=768)),
    },
    # Cloud fills first (the edge pool is the overflow) unless a test or the batch class says otherwise.
    router=RouterConfig(fill_order=["cloud", "edge"], slo_class_preferences={"batch": "edge"}, probe_every_s=None),
)


@dataclass(frozen=True)
class ServedApp:
    base_url: str
    model: str
    model_path: Path
    config: AppConfig

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def demo_model_path() -> Path:
    from orchestrator.demo_model import build_demo_model

    return build_demo_model()


@pytest.fixture(scope="session")
def served_app(demo_model_path: Path) -> Iterator[ServedApp]:
    import ray
    from ray import serve

    from deployments.app import APP_NAME, build_app, resolve_model

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    port = _free_port()
    # address="local": a fresh instance, never a running `elo run` cluster found through /tmp/ray.
    ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        serve.start(proxy_location="Disabled")  # the router serves HTTP itself, as in `elo run`
        serve.run(build_app(TEST_CONFIG, resolve_model(TEST_CONFIG.model), "127.0.0.1", port), name=APP_NAME,
                  route_prefix=None, blocking=False)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        state: object = None
        while time.monotonic() < deadline:
            try:
                state = httpx.get(f"{base}/elo/pools", timeout=5).json()["pools"]
                if set(state) == set(TEST_CONFIG.pools) and all(p["ready_replicas"] > 0 for p in state.values()):  # type: ignore[union-attr]
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        else:
            pytest.fail(f"Serve app not ready after 300 s: {state}")
        yield ServedApp(base, TEST_CONFIG.model.served_name, demo_model_path, TEST_CONFIG)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def tokenizer(demo_model_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(demo_model_path))


@contextlib.contextmanager
def elo_run(args: list[str], work: Path) -> Iterator[subprocess.Popen]:
    """`elo run ARGS` in its own process group (its own Ray cluster), logging to WORK/elo-run.log; yields once it
    serves (or fails the test if it exits first); stopped with SIGINT, as a user would, killed if it hangs."""
    log_path = work / "elo-run.log"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("elo")), "run", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            # Until it serves, or exits (its own --ready-timeout-s ends a start that never gets ready).
            while "Serving" not in log_path.read_text():
                if proc.poll() is not None:
                    pytest.fail(f"elo run exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
                time.sleep(1)
            yield proc
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run tests that do not need the shared Serve app first, so its replicas (vLLM polls the CPU even when
    idle) do not compete with tests that start their own Ray cluster."""
    items.sort(key=lambda item: "served_app" in getattr(item, "fixturenames", ()))
