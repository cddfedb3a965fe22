"""Chaos check: kill -9 one pool's replica while streams are in flight, and account for every request.

Starts `elo run --no-controller` (the embedded default, the chosen pool preferred for this run's SLO class), takes
one greedy reference answer, then sends --streams streaming chat requests of --tokens tokens (greedy, ignore_eos)
at --concurrency, and once --kill-after of its streams are mid-answer sends SIGKILL to the pool's replica process
(`ray::ServeReplica:...:pool-<pool>`). Each request ends as: complete (finish_reason and [DONE]), error (an SSE
error event), cut (the connection closed mid-stream) or refused (429/503 before it started); a complete one is
"identical" when its text is the reference's. Prints the counts and writes JSON.

`--replicas N` starts the pool with N replicas and kills one: the streams it carried continue on another of the
pool's replicas (the same engine), when it has room. `--pool router` kills the router replica instead: the endpoint is down until Serve restarts it (it prints when
/healthz answered again).

Usage: .venv/bin/python scripts/chaos_kill.py --pool edge|cloud|router [--streams 96] [--concurrency 24] [--tokens 900]
       [--replicas 1] [--out bench-results/chaos-kill-POOL.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import yaml
from local_run import ROOT, elo_run

from deployments.config import AppConfig

HEADERS = {"x-slo-class": "chaos"}


def replica_pids(target: str) -> list[int]:
    """Pids of the Serve replica processes of a pool or of the router (Ray names them
    ray::ServeReplica:APP:pool-POOL and ray::ServeReplica:APP:router)."""
    deployment = "router" if target == "router" else f"pool-{target}"
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()[1:]
            if "ServeReplica" in line and line.split()[1].endswith(f":{deployment}")]


async def one(client: httpx.AsyncClient, url: str, tokens: int, mid: dict[str, int],
              gate: asyncio.Semaphore) -> dict:
    body = {"model": "elo-demo", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "ignore_eos": True}
    text, started, pool = [], False, None
    async with gate:
        try:
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=HEADERS) as r:
                pool = r.headers.get("x-elo-pool")
                if r.status_code != 200:
                    await r.aread()
                    return {"outcome": "refused" if r.status_code in (429, 503) else f"http {r.status_code}"}
                done = finished = False
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line[6:] == "[DONE]":
                        done = True
                        break
                    event = json.loads(line[6:])
                    if "error" in event:
                        return {"outcome": "error", "pool": pool, "error": event["error"].get("message", "")[:200]}
                    for c in event.get("choices", []):
                        text.append((c.get("delta") or {}).get("content") or "")
                        finished = finished or c.get("finish_reason") is not None
                    if not started and len(text) >= 3:
                        started = True
                        mid[pool or ""] = mid.get(pool or "", 0) + 1
                return {"outcome": "complete" if done and finished else "cut", "pool": pool, "text": "".join(text)}
        except httpx.HTTPError as e:
            return {"outcome": "cut" if started else "refused-connection", "pool": pool, "error": repr(e)[:200]}
        finally:
            if started:
                mid[pool or ""] -= 1


async def drive(url: str, pool: str, streams: int, concurrency: int, tokens: int, kill_after: int) -> dict:
    async with httpx.AsyncClient(timeout=httpx.Timeout(900, connect=10),
                                 limits=httpx.Limits(max_connections=concurrency + 8)) as client:
        reference = await one(client, url, tokens, {}, asyncio.Semaphore(1))
        mid: dict[str, int] = {}
        gate = asyncio.Semaphore(concurrency)
        tasks = [asyncio.create_task(one(client, url, tokens, mid, gate)) for _ in range(streams)]
        # Kill once the pool has kill_after streams mid-answer (as the client reads them: the replica is ahead).
        def started() -> int:
            return sum(mid.values()) if pool == "router" else mid.get(pool, 0)

        while started() < kill_after and not all(t.done() for t in tasks):
            await asyncio.sleep(0.005)
        pids = replica_pids(pool)[:1]  # one replica (the pool's only one unless --replicas)
        killed_at, in_flight = time.monotonic(), dict(mid)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        recovered_s = None
        if pool == "router":  # the endpoint is down until Serve restarts the router replica
            while recovered_s is None and time.monotonic() - killed_at < 600:
                try:
                    if (await client.get(f"{url}/healthz", timeout=2)).status_code == 200:
                        recovered_s = round(time.monotonic() - killed_at, 1)
                except httpx.HTTPError:
                    await asyncio.sleep(0.25)
        results = await asyncio.gather(*tasks)
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    complete = [r for r in results if r["outcome"] == "complete"]
    ref = reference.get("text") or ""
    mismatches = []
    for r in complete:
        if r["text"] != ref:
            pairs = enumerate(zip(r["text"], ref, strict=False))
            at = next((i for i, (a, b) in pairs if a != b), min(len(r["text"]), len(ref)))
            mismatches.append({"at_char": at, "length": len(r["text"]), "reference_length": len(ref),
                               "got": r["text"][max(0, at - 30):at + 30], "reference": ref[max(0, at - 30):at + 30]})
    return {"pool_killed": pool, "pids_killed": pids, "streams": streams, "concurrency": concurrency,
            "tokens": tokens, "mid_stream_at_kill": in_flight, "outcomes": outcomes,
            "identical_to_reference": sum(r["text"] == ref for r in complete), "mismatches": mismatches[:5],
            "served_by": {p: sum(r.get("pool") == p for r in results) for p in ("cloud", "edge")},
            "errors": sorted({r["error"] for r in results if r.get("error")})[:5],
            "last_stream_after_kill_s": round(time.monotonic() - killed_at, 1), "endpoint_back_after_s": recovered_s,
            "reference_outcome": reference["outcome"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", choices=["edge", "cloud", "router"], required=True,
                    help="The pool whose replica is killed, or the router")
    ap.add_argument("--streams", type=int, default=96)
    ap.add_argument("--concurrency", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=900)
    ap.add_argument("--kill-after", type=int, default=4, help="Streams of the pool mid-answer when it is killed")
    ap.add_argument("--replicas", type=int, default=1, help="Replicas of the pool (one is killed)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or ROOT / "bench-results" / f"chaos-kill-{args.pool}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    config = out.with_suffix(".app.yaml")
    prefer = "edge" if args.pool == "router" else args.pool
    app = AppConfig().model_dump(mode="json")
    app["router"]["slo_class_preferences"] = {"chaos": prefer}
    app["pools"][prefer]["replicas"] = args.replicas
    config.write_text(yaml.safe_dump(app), encoding="utf-8")
    with elo_run(["--no-controller", "--config", str(config)], out.with_suffix(".log")) as (url, _):
        result = asyncio.run(drive(url, args.pool, args.streams, args.concurrency, args.tokens, args.kill_after))
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        result["router_metrics"] = [line for line in metrics.splitlines()
                                    if line.startswith(("elo_stream_resumes_total", "elo_retries_total"))]
    print(json.dumps(result, indent=2))
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
