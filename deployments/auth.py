"""API keys: who may call what, and per-key request and token budgets (token buckets on a clock passed in)."""

from __future__ import annotations

import hmac
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from deployments.config import ApiKey, AuthConfig
from deployments.protocol import APIError


def keys_from_env(env: Mapping[str, str] = os.environ) -> list[ApiKey]:
    """ELO_API_KEYS (client keys, all rights but admin) and ELO_ADMIN_KEYS (also /elo/*), comma-separated."""
    out = []
    for var, admin in (("ELO_API_KEYS", False), ("ELO_ADMIN_KEYS", True)):
        for i, key in enumerate(k.strip() for k in env.get(var, "").split(",")):
            if key:
                out.append(ApiKey(key=key, name=f"{var.lower()}[{i}]", admin=admin))
    return out


@dataclass
class _Bucket:
    """``per_minute`` units, refilled continuously."""

    per_minute: float
    level: float
    at_s: float

    def take(self, amount: float, now: float) -> float | None:
        """Take ``amount`` (at most a full bucket); None when taken, else the seconds until it could be."""
        self.level = min(self.per_minute, self.level + (now - self.at_s) * self.per_minute / 60.0)
        self.at_s = now
        amount = min(amount, self.per_minute)
        if self.level >= amount:
            self.level -= amount
            return None
        return (amount - self.level) * 60.0 / self.per_minute


class Auth:
    """Authenticates bearer keys and applies each key's rights and budgets. No keys: everything is open."""

    def __init__(self, config: AuthConfig, clock: Callable[[], float], extra: list[ApiKey] | None = None):
        self.keys = [*config.keys, *(extra or [])]
        self.open_metrics = config.open_metrics
        self.clock = clock
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def authenticate(self, authorization: str | None, *, admin: bool = False) -> ApiKey | None:
        """The caller's key (None when auth is off); 401 without a valid one, 403 when ``admin`` is needed."""
        if not self.enabled:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        key = next((k for k in self.keys if scheme.lower() == "bearer" and hmac.compare_digest(k.key, token.strip())),
                   None)
        if key is None:
            raise APIError(401, "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
                           type="authentication_error", code="invalid_api_key")
        if admin and not key.admin:
            raise APIError(403, "This key may not call the control endpoints (/elo/*); use an admin key.",
                           type="permission_error", code="insufficient_permissions")
        return key

    def admit(self, key: ApiKey | None, *, slo_class: str | None, ignore_eos: bool, tokens: int) -> None:
        """The key's rights for this request, then its budgets: 403 or 429 with Retry-After."""
        if key is None:
            return
        if slo_class is not None and key.slo_classes is not None and slo_class not in key.slo_classes:
            raise APIError(403, f"This key may not use SLO class '{slo_class}' (allowed: {key.slo_classes}).",
                           type="permission_error", param="x-slo-class", code="insufficient_permissions")
        if ignore_eos and not key.allow_ignore_eos:
            raise APIError(403, "This key may not send 'ignore_eos'.", type="permission_error", param="ignore_eos",
                           code="insufficient_permissions")
        now = self.clock()
        for buckets, limit, amount, what in ((self._requests, key.requests_per_minute, 1, "requests"),
                                             (self._tokens, key.tokens_per_minute, tokens, "tokens")):
            if limit is None:
                continue
            bucket = buckets.setdefault(key.key, _Bucket(float(limit), float(limit), now))
            wait_s = bucket.take(amount, now)
            if wait_s is not None:
                retry = max(1, math.ceil(wait_s))
                raise APIError(429, f"Rate limit of {limit} {what} per minute reached for key '{key.name}'; "
                               f"retry in {retry} s.", type="rate_limit_error", code="rate_limit_exceeded",
                               headers={"Retry-After": str(retry)})
