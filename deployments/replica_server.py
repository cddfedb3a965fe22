"""A pool replica's own HTTP server: its ASGI app on uvicorn inside the Serve replica, on the node's address and a
free port; counts the requests it is serving and drains them before the replica stops."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

log = logging.getLogger("ray.serve")


class ReplicaServer:
    """Serves ``app``; :attr:`url` is where the router reaches it (published with ``record_replica_metadata``)."""

    def __init__(self, app: Any, host: str | None = None):
        self.app = app
        self.host = host
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self) -> str:
        import uvicorn

        host = self.host or _node_ip()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        sock.listen(2048)
        port = sock.getsockname()[1]
        config = uvicorn.Config(self._counting, interface="asgi3", log_level="warning", access_log=False, lifespan="off",
                                timeout_keep_alive=75)
        self._server = uvicorn.Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        for _ in range(500):  # until uvicorn listens (a few ms)
            if self._server.started:
                break
            await asyncio.sleep(0.01)
        self.url = f"http://{host}:{port}"
        return self.url

    async def _counting(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        self._idle.clear()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def drain(self, timeout_s: float) -> int:
        """Wait until no request is in flight (at most ``timeout_s``), then stop serving; returns the requests
        still in flight when it stopped (0 after a clean drain)."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("replica server: %d requests still in flight after %.0f s of draining",
                        self.in_flight, timeout_s)
        left = self.in_flight
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except (TimeoutError, asyncio.CancelledError, Exception):
                self._task.cancel()
        return left


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # outside Ray (tests): loopback
        return "127.0.0.1"
