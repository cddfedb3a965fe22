"""The running replicas of each pool and the address each serves HTTP on, as Serve pushes them to this process's
deployment handles (its long poll of running replicas; no ``serve.status()`` polling).

Serve 2.60 has no public call that lists another deployment's running replicas with their metadata; the handle's
request router holds exactly that list (``RunningReplica.replica_metadata``, filled by each replica's
``record_replica_metadata``), so this one module reads it. ``ray[serve]`` is pinned to 2.60.*; the integration
tests fail loudly if the attribute path moves.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("ray.serve")


class ServeReplicas:
    """``{replica id: base URL}`` of the running replicas of one deployment that published a URL."""

    def __init__(self, handle: Any):
        self.handle = handle
        if not handle.is_initialized:
            handle._init()

    def endpoints(self) -> dict[str, str]:
        router = getattr(self.handle._router, "_asyncio_router", None)
        request_router = getattr(router, "request_router", None) if router is not None else None
        if request_router is None:  # the deployment's config has not arrived over the long poll yet
            return {}
        replicas = dict(request_router.curr_replicas)  # a snapshot: Serve updates it from its own loop
        out = {}
        for replica_id, replica in replicas.items():
            url = (replica.replica_metadata or {}).get("url")
            if url:
                out[str(replica_id.unique_id)] = url
        return out
