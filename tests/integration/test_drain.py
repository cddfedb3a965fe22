"""Graceful drain, with request accounting: SIGTERM to `elo run` while streams are in flight lets every one of them
finish, and `elo run` exits cleanly."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import _free_port, elo_run

pytestmark = pytest.mark.integration


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


def test_sigterm_with_streams_in_flight_lets_every_stream_finish(tmp_path: Path, demo_model_path: Path):
    port = _free_port()
    with elo_run(["--no-controller", "--port", str(port), "--metrics-port", "0", "--dashboard-port",
                  str(_free_port()), "--state-dir", str(tmp_path / "state")], tmp_path) as proc:
        url = f"http://127.0.0.1:{port}"

        async def drive(n: int = 8) -> list[str]:
            started, count = asyncio.Event(), [0]
            async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10)) as client:
                tasks = [asyncio.create_task(_stream(client, url, started, count, n)) for _ in range(n)]
                await started.wait()  # every stream has its first token
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks)

        outcomes = asyncio.run(drive())
        code = proc.wait(300)
    # All 8 streams in flight at the signal complete: none cut, none ended by an error event.
    assert outcomes == ["complete"] * 8, outcomes
    assert code == 0 and "Stopped cleanly." in (tmp_path / "elo-run.log").read_text()
