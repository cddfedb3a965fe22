"""Act: sets each pool's Serve replica count through Ray Serve's external-scaler REST API on the Ray dashboard.

Ray Serve 2.60 lets an outside controller own a deployment's replica count when the application is deployed
with ``external_scaler_enabled=True`` (``serve.run(..., external_scaler_enabled=True)`` or the same key in a
Serve config file). The dashboard then accepts::

    POST {dashboard}/api/v1/applications/{app}/deployments/{deployment}/scale  {"target_num_replicas": n}

and answers 200 (scaled asynchronously), 400 (bad body), 404 (application or deployment not found),
412 (external scaling disabled for the app, or the deployment is being deleted) or 503 (controller
unavailable or internal error) — see ``ray/dashboard/modules/serve/serve_head.py``. Replica states come from
``GET {dashboard}/api/serve/applications/`` (``ServeInstanceDetails`` in ``ray/serve/schema.py``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from orchestrator.control.errors import (
    ConflictError,
    ControlError,
    NotFoundError,
    PermanentError,
    TransientError,
)

log = logging.getLogger(__name__)

# Replica states of ray.serve._private.common.ReplicaState that count as serving. PENDING_MIGRATION replicas
# still serve while their replacement starts on another node.
READY_STATES = frozenset({"RUNNING", "PENDING_MIGRATION"})


def default_deployment_for(pool: str) -> str:
    """The deployment name of a pool in the ``elo`` app (``deployments.app.pool_deployment_name``)."""
    return f"pool-{pool}"


class ServeScaler:
    """:class:`~orchestrator.control.adapters.base.ReplicaScaler` over the Ray dashboard's Serve REST API.

    Idempotent: :meth:`set_replicas` reads the deployment's current target first and sends nothing when it
    already equals the wanted count. Timeouts, connection errors and 5xx answers are retried ``attempts``
    times with exponential backoff (``backoff_s``, doubled each time), then raised as
    :class:`~orchestrator.control.errors.TransientError`; 4xx answers are not retried (404 →
    :class:`~orchestrator.control.errors.NotFoundError`, 409 → ``ConflictError``, others →
    :class:`~orchestrator.control.errors.PermanentError`, with the server's message).
    """

    def __init__(self, dashboard_url: str, app_name: str = "elo",
                 deployment_for: Callable[[str], str] = default_deployment_for,
                 client: httpx.Client | None = None, *, timeout_s: float = 10.0, attempts: int = 3,
                 backoff_s: float = 0.5, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.dashboard_url = dashboard_url.rstrip("/")
        self.app_name = app_name
        self.deployment_for = deployment_for
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout_s)
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._sleep = sleep
        self._clock = clock
        # Startup measurement: when each replica not ready yet was asked for (oldest first), recent ask -> ready.
        self._asked: dict[str, deque[float]] = {}
        self._startups: dict[str, deque[float]] = {}
        self._last_ready: dict[str, int] = {}

    # -- ReplicaScaler -------------------------------------------------------------------------------------

    def set_replicas(self, pool: str, replicas: int) -> None:
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        deployment = self.deployment_for(pool)
        details = self._deployment_details(pool, deployment, for_scaling=True)
        if details.get("target_num_replicas") == replicas:
            return
        path = f"/api/v1/applications/{self.app_name}/deployments/{deployment}/scale"
        self._request("POST", path, f"scale {self.app_name}/{deployment} to {replicas}",
                      json={"target_num_replicas": replicas})
        asked = self._asked.setdefault(pool, deque())
        previous = details.get("target_num_replicas")
        if isinstance(previous, int) and replicas > previous:
            asked.extend([self._clock()] * (replicas - previous))
        ready = _ready_replicas(details)
        while len(asked) > max(0, replicas - ready):  # scaled down: the newest asks are withdrawn
            asked.pop()
        log.info("serve: %s/%s target %s -> %s replicas", self.app_name, deployment,
                 details.get("target_num_replicas"), replicas)

    def get_replicas(self, pool: str) -> tuple[int, int]:
        """``(ready, starting)``; ``starting`` is the target not met by ready replicas yet (never negative).

        Counting "asked for, not ready" from the target rather than from replicas in state STARTING covers the
        moment after a scale-up when Serve has not created the replica actors yet, and leaves out replicas
        that are starting only to be stopped by a scale-down.
        """
        details = self._deployment_details(pool, self.deployment_for(pool))
        try:
            ready = sum(1 for r in details.get("replicas", ()) if r["state"] in READY_STATES)
            target = int(details["target_num_replicas"])
        except (KeyError, TypeError, ValueError) as e:
            raise PermanentError(f"unexpected Serve deployment details for pool {pool!r}: {e!r}") from e
        self._measure(pool, ready)
        return ready, max(0, target - ready)

    def release_pools_deployed_at_zero(self, pools: list[str], configured: Mapping[str, int] | None = None) -> list[str]:
        """Serve cannot deploy zero replicas, so a pool whose app config says ``replicas: 0`` is deployed with
        one (``deployments.app``); set those pools to zero while that one replica has never been ready (it waits
        for a node nobody asked for). A pool that has served since (a restarted controller) is left alone.
        ``configured``: pool -> configured replicas; default: read from the deployed Serve config (config-file
        deployments such as a RayService). Returns the pools set to zero; raises TransientError/NotFoundError
        while the app is not deployed."""
        app = self._application("release pools deployed at zero")
        if configured is None:
            config = ((app.get("deployed_app_config") or {}).get("args") or {}).get("config") or {}
            configured = {p: (c or {}).get("replicas", 1) for p, c in (config.get("pools") or {}).items()}
        released = []
        for pool in pools:
            if configured.get(pool, 1) != 0:
                continue
            details = (app.get("deployments") or {}).get(self.deployment_for(pool))
            if details is None:  # the app is still being deployed: the caller retries
                raise NotFoundError(f"pool {pool!r}: deployment {self.deployment_for(pool)!r} not listed yet")
            ready = _ready_replicas(details)
            if details.get("target_num_replicas") == 1 and ready == 0 and self._last_ready.get(pool, 0) == 0:
                self.set_replicas(pool, 0)
                released.append(pool)
        return released

    def measured_startup_s(self, pool: str) -> float | None:
        """Measured ask -> ready of this pool's replicas (mean of the last few, node start included when the
        replica had to wait for one); None until one was seen. Measured between calls of :meth:`get_replicas`,
        so it is as precise as the controller's tick."""
        recent = self._startups.get(pool)
        return sum(recent) / len(recent) if recent else None

    def _measure(self, pool: str, ready: int) -> None:
        """Replicas that became ready since the last call finish the oldest pending asks (a restarted replica,
        asked for by nobody, finishes none)."""
        gained = ready - self._last_ready.get(pool, ready)
        self._last_ready[pool] = ready
        asked = self._asked.get(pool)
        now = self._clock()
        while gained > 0 and asked:
            self._startups.setdefault(pool, deque(maxlen=5)).append(now - asked.popleft())
            gained -= 1

    # -- lifecycle -----------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> ServeScaler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP ----------------------------------------------------------------------------------------------

    def _application(self, needed_for: str) -> Mapping[str, Any]:
        """The app's entry in the dashboard's Serve applications (one GET)."""
        response = self._request("GET", "/api/serve/applications/", "read Serve applications")
        try:
            body = response.json()
        except ValueError as e:
            raise TransientError(f"Serve applications: the dashboard answered non-JSON: {response.text[:200]!r}") from e
        apps = (body.get("applications") or {}) if isinstance(body, dict) else {}
        app = apps.get(self.app_name)
        if app is None:
            raise NotFoundError(f"Serve application {self.app_name!r} is not deployed (deployed: "
                                f"{', '.join(sorted(apps)) or 'none'}); cannot {needed_for}")
        return app

    def _deployment_details(self, pool: str, deployment: str, *, for_scaling: bool = False) -> Mapping[str, Any]:
        app = self._application(f"manage pool {pool!r}")
        deployments = app.get("deployments") or {}
        details = deployments.get(deployment)
        if details is None:
            raise NotFoundError(f"pool {pool!r}: no deployment {deployment!r} in Serve application "
                                f"{self.app_name!r} (deployments: {', '.join(sorted(deployments)) or 'none'})")
        if for_scaling and app.get("external_scaler_enabled") is False:
            raise PermanentError(f"Serve application {self.app_name!r} was deployed without "
                                 "external_scaler_enabled=True, so its replica counts cannot be set from outside; "
                                 "redeploy it with serve.run(..., external_scaler_enabled=True)")
        return details

    def _request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        url = self.dashboard_url + path
        last: str = ""
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(self._backoff_s * 2 ** (attempt - 1))
            try:
                response = self._client.request(method, url, timeout=self._timeout_s, **kwargs)
            except httpx.TransportError as e:  # timeouts, refused/reset connections, protocol errors
                last = f"{type(e).__name__}: {e}"
                if attempt == self._attempts - 1:
                    raise TransientError(f"{what}: {url} unreachable after {self._attempts} attempts ({last})") from e
                continue
            if response.status_code < 400:
                return response
            message = _server_message(response)
            if response.status_code < 500:
                raise _client_error(response, f"{what}: HTTP {response.status_code}: {message}")
            last = f"HTTP {response.status_code}: {message}"
            if attempt == self._attempts - 1:
                raise TransientError(f"{what}: {last} (after {self._attempts} attempts)",
                                     _retry_after_s(response, default=5.0))
        raise AssertionError("unreachable")  # pragma: no cover


def _ready_replicas(details: Mapping[str, Any]) -> int:
    return sum(1 for r in details.get("replicas", ()) if r.get("state") in READY_STATES)


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return str(body)[:500]


def _client_error(response: httpx.Response, message: str) -> ControlError:
    status = response.status_code
    if status == 404:
        return NotFoundError(message)
    if status == 409:
        return ConflictError(message)
    if status == 412 and "deleted" in message.lower():
        return NotFoundError(message)  # Serve: "Deployment is deleted" (being deleted)
    if status == 429:
        return TransientError(message, _retry_after_s(response, default=5.0))
    return PermanentError(message)  # 400 bad body, 412 external scaling disabled, other 4xx


def _retry_after_s(response: httpx.Response, default: float) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", default)))
    except ValueError:
        return default


__all__ = ["READY_STATES", "ServeScaler", "default_deployment_for"]
