"""The router's drain gate: once draining, new API requests get 503 with Retry-After; health, metrics and the
control endpoints still answer; requests in flight are counted until they finish."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from deployments.router import _Gate


def app_and_gate() -> tuple[_Gate, asyncio.Event]:
    release = asyncio.Event()
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> dict:
        await release.wait()
        return {"ok": True}

    @app.get("/healthz")
    async def health() -> dict:
        return {"status": "ok"}

    return _Gate(app, retry_after_s=2), release


def test_draining_refuses_new_api_requests_and_waits_for_those_in_flight():
    async def scenario() -> None:
        gate, release = app_and_gate()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gate), base_url="http://router") as c:
            in_flight = asyncio.create_task(c.post("/v1/chat/completions", json={}))
            while gate.in_flight == 0:
                await asyncio.sleep(0.01)
            gate.draining = True
            refused = await c.post("/v1/chat/completions", json={})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
            assert refused.json()["error"]["code"] == "draining"
            assert (await c.get("/healthz")).status_code == 200
            assert not gate.idle.is_set() and gate.in_flight == 1
            release.set()
            assert (await in_flight).json() == {"ok": True}
            assert gate.idle.is_set() and gate.in_flight == 0

    asyncio.run(scenario())
