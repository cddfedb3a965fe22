"""Observe, for scale-down: which pods host Ray Serve replicas, from the Ray dashboard's Serve REST API.

``GET {dashboard}/api/serve/applications/`` answers ``ServeInstanceDetails`` (``ray/serve/schema.py``): per
application and deployment, ``replicas`` as ``ReplicaDetails``, each with the ``node_id``, ``node_ip`` and
``node_instance_id`` of the Ray node it runs on. On KubeRay a worker pod is one Ray node: ``node_instance_id`` is
the pod's name where KubeRay sets ``RAY_CLOUD_INSTANCE_ID``, and ``node_ip`` is the pod's IP in any case.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from orchestrator.control.errors import TransientError

GONE_STATES = frozenset({"STOPPED"})  # ReplicaState values of replicas no longer holding their node


def count_replicas_by_pod(details: Mapping[str, Any], pods: Mapping[str, str | None]) -> dict[str, int]:
    """Live replicas (of every application and deployment) per pod of ``pods`` (``{name: pod IP or None}``).

    A replica is placed on a pod by ``node_instance_id`` (the pod's name) when it names one of ``pods``, else by
    ``node_ip`` (the pod's IP). Replicas on other nodes (the head) or not placed yet are not counted.
    """
    counts = dict.fromkeys(pods, 0)
    by_ip = {ip: name for name, ip in pods.items() if ip}
    for app in ((details.get("applications") or {}) if isinstance(details, Mapping) else {}).values():
        for deployment in (app.get("deployments") or {}).values():
            for replica in deployment.get("replicas") or ():
                if replica.get("state") in GONE_STATES:
                    continue
                instance = replica.get("node_instance_id")
                pod = instance if instance in counts else by_ip.get(replica.get("node_ip") or "")
                if pod is not None:
                    counts[pod] += 1
    return counts


class ServeReplicaPlacement:
    """``replicas_on`` of :class:`~orchestrator.control.adapters.kuberay.KubeRayPoolBackend`: Serve replicas per pod.

    Any failure (unreachable dashboard, error status, unexpected body) is a
    :class:`~orchestrator.control.errors.TransientError`: when it cannot tell, the backend removes nothing.
    """

    def __init__(self, dashboard_url: str, client: httpx.Client | None = None, *, timeout_s: float = 5.0) -> None:
        self.dashboard_url = dashboard_url.rstrip("/")
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout_s)

    def __call__(self, pods: Mapping[str, str | None]) -> dict[str, int]:
        url = f"{self.dashboard_url}/api/serve/applications/"
        try:
            response = self._client.get(url)
            if response.status_code >= 400:
                raise ValueError(f"HTTP {response.status_code}: {response.text.strip()[:200]!r}")
            details = response.json()
            if not isinstance(details, Mapping):
                raise ValueError(f"a {type(details).__name__}, not Serve's instance details")
        except (httpx.HTTPError, ValueError) as e:
            raise TransientError(f"cannot read Serve replica placement from {url} ({type(e).__name__}: {e}); "
                                 "no pod is removed until it can") from e
        return count_replicas_by_pod(details, pods)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


__all__ = ["GONE_STATES", "ServeReplicaPlacement", "count_replicas_by_pod"]
