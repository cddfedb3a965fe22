"""API keys: 401 without a valid bearer, 403 for what a key may not do, 429 with Retry-After beyond its budget."""

from __future__ import annotations

import pytest

from deployments.auth import Auth, keys_from_env
from deployments.config import ApiKey, AuthConfig
from deployments.protocol import APIError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def auth(*keys: ApiKey, clock: Clock | None = None) -> Auth:
    return Auth(AuthConfig(keys=list(keys)), clock or Clock())


USER = ApiKey(key="user-key-123", name="user")
ADMIN = ApiKey(key="admin-key-123", name="ops", admin=True)


def error(fn, *args, **kw) -> APIError:
    with pytest.raises(APIError) as e:
        fn(*args, **kw)
    return e.value


def test_no_keys_means_open():
    a = Auth(AuthConfig(), Clock())
    assert not a.enabled and a.authenticate(None) is None and a.authenticate(None, admin=True) is None


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer wrong-key-000", "Basic user-key-123",
                                    "user-key-123"])
def test_a_missing_or_wrong_bearer_gets_401(header):
    e = error(auth(USER).authenticate, header)
    assert (e.status, e.type, e.code) == (401, "authentication_error", "invalid_api_key")


def test_a_valid_bearer_is_the_callers_key_and_only_admin_keys_reach_the_control_endpoints():
    a = auth(USER, ADMIN)
    assert a.authenticate("Bearer user-key-123") == USER and a.authenticate("bearer admin-key-123") == ADMIN
    assert a.authenticate("Bearer admin-key-123", admin=True) == ADMIN
    assert error(a.authenticate, "Bearer user-key-123", admin=True).status == 403


def test_slo_class_and_ignore_eos_are_allowed_per_key():
    batch_only = ApiKey(key="batch-key-123", slo_classes=["batch"], allow_ignore_eos=False)
    a = auth(batch_only)
    a.admit(batch_only, slo_class="batch", ignore_eos=False, tokens=10)
    a.admit(batch_only, slo_class=None, ignore_eos=False, tokens=10)
    e = error(a.admit, batch_only, slo_class="interactive", ignore_eos=False, tokens=10)
    assert (e.status, e.param) == (403, "x-slo-class")
    e = error(a.admit, batch_only, slo_class="batch", ignore_eos=True, tokens=10)
    assert (e.status, e.param) == (403, "ignore_eos")


def test_requests_per_minute_refuse_with_429_and_retry_after_then_refill():
    clock = Clock()
    key = ApiKey(key="limited-key-1", requests_per_minute=2)
    a = auth(key, clock=clock)
    a.admit(key, slo_class=None, ignore_eos=False, tokens=1)
    a.admit(key, slo_class=None, ignore_eos=False, tokens=1)
    e = error(a.admit, key, slo_class=None, ignore_eos=False, tokens=1)
    assert e.status == 429 and e.headers["Retry-After"] == "30" and e.type == "rate_limit_error"
    clock.now = 30.0  # one request's worth refilled
    a.admit(key, slo_class=None, ignore_eos=False, tokens=1)
    assert error(a.admit, key, slo_class=None, ignore_eos=False, tokens=1).status == 429


def test_tokens_per_minute_charge_prompt_plus_max_tokens():
    clock = Clock()
    key = ApiKey(key="token-key-12", tokens_per_minute=1000)
    other = ApiKey(key="other-key-12", tokens_per_minute=1000)
    a = auth(key, other, clock=clock)
    a.admit(key, slo_class=None, ignore_eos=False, tokens=900)
    e = error(a.admit, key, slo_class=None, ignore_eos=False, tokens=200)
    assert e.status == 429 and e.headers["Retry-After"] == "6"  # 100 missing at 1000/min
    a.admit(other, slo_class=None, ignore_eos=False, tokens=900)  # budgets are per key
    clock.now = 6.0
    a.admit(key, slo_class=None, ignore_eos=False, tokens=200)


def test_keys_from_the_environment():
    keys = keys_from_env({"ELO_API_KEYS": "aaaaaaaa1, bbbbbbbb2,", "ELO_ADMIN_KEYS": "cccccccc3"})
    assert [(k.key, k.admin) for k in keys] == [("aaaaaaaa1", False), ("bbbbbbbb2", False), ("cccccccc3", True)]
