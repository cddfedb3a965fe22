"""Chaos check: stop `elo run` (SIGINT) with streams in flight and account for every request.

Starts `elo run` (the embedded default, or --config), sends --streams concurrent streaming chat requests of
--tokens tokens (ignore_eos), sends SIGINT once every stream has its first token, and waits for all. Each request
ends as: complete (finish_reason and [DONE]), refused (a 503 with Retry-After before it started), cut (the
connection closed mid-stream) or error (an SSE error event). Prints the counts and writes JSON.

Usage: .venv/bin/python scripts/chaos_drain.py [--streams 32] [--tokens 900] [--out bench-results/drain.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
from local_run import ROOT, elo_run


async def one(client: httpx.AsyncClient, url: str, tokens: int, started: asyncio.Event, counter: list[int],
              n: int) -> str:
    body = {"model": "elo-demo", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "ignore_eos": True}
    first = False
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return "refused" if r.status_code in (429, 503) and r.headers.get("retry-after") else f"http {r.status_code}"
            done = finished = False
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    return "error"
                if not first:
                    first = True
                    counter[0] += 1
                    if counter[0] == n:
                        started.set()
                finished = finished or any(c.get("finish_reason") for c in event.get("choices", []))
            return "complete" if done and finished else "cut"
    except httpx.HTTPError:
        return "cut" if first else "refused-connection"


async def drive(url: str, streams: int, tokens: int, proc: subprocess.Popen) -> dict[str, int]:
    started = asyncio.Event()
    counter = [0]
    async with httpx.AsyncClient(timeout=httpx.Timeout(900, connect=10),
                                 limits=httpx.Limits(max_connections=streams + 8)) as client:
        tasks = [asyncio.create_task(one(client, url, tokens, started, counter, streams)) for _ in range(streams)]
        await started.wait()
        t_sig = time.monotonic()
        proc.send_signal(signal.SIGINT)
        await asyncio.sleep(5)  # elo run is shutting down: new requests must be refused, not cut
        after = await asyncio.gather(*(one(client, url, 8, asyncio.Event(), [0], 1) for _ in range(4)))
        unfinished_at_new = sum(not t.done() for t in tasks)
        results = await asyncio.gather(*tasks)
    counts: dict[str, int] = {}
    for r in results:
        counts[r] = counts.get(r, 0) + 1
    return {"in_flight_at_signal": streams, "outcomes": counts, "new_requests_after_signal": after,
            "streams_still_running_when_new_requests_came": unfinished_at_new,
            "last_stream_after_signal_s": round(time.monotonic() - t_sig, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=900)
    ap.add_argument("--config", default=None)
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "drain.json"))
    args = ap.parse_args()
    config = ["--config", args.config] if args.config else []
    with elo_run(["--no-controller", *config], Path(args.out).with_suffix(".log"), stop_timeout_s=0) as (url, proc):
        result = asyncio.run(drive(url, args.streams, args.tokens, proc))
        proc.wait(600)
        result["elo_run_exit_code"] = proc.returncode
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
