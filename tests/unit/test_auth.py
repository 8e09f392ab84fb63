"""API keys and their roles (producers/gateway/auth.py): who may call, rate, and send ground truth."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from starlette.requests import Request

from infra.settings import GatewaySettings
from producers.gateway.api import ApiError
from producers.gateway.auth import Keys, key_id


def request(key: str | None) -> Request:
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


def keys(**kw: object) -> Keys:
    base = {
        "api_keys": SecretStr("app-1,app-2"),
        "trusted_keys": SecretStr("eval-1"),
        "admin_key": SecretStr("root"),
        "rate_limit_rps": 0,
        "feedback_rate_limit_rps": 1,
        "feedback_rate_limit_burst": 2,
    }
    return Keys(GatewaySettings(**(base | kw)))  # type: ignore[arg-type]


def test_each_key_gets_its_role_and_a_wrong_one_gets_401() -> None:
    k = keys()
    app = k.check(request("app-1"))
    assert app.key_id == key_id("app-1") and not app.trusted and not app.admin
    assert k.check(request("eval-1")).trusted  # a trusted key is an API key too
    with pytest.raises(ApiError) as e:
        k.check(request("root"))  # the admin key is not an API key
    assert e.value.status == 401
    assert k.check(request("root"), admin=True).admin
    for bad in (None, "nope"):
        with pytest.raises(ApiError) as e:
            k.check(request(bad))
        assert e.value.status == 401
    with pytest.raises(ApiError):
        k.check(request("app-1"), admin=True)


def test_feedback_has_its_own_bucket_per_key() -> None:
    k = keys()
    for _ in range(2):
        k.check(request("app-1"), limiter=k.feedback)
    with pytest.raises(ApiError) as e:
        k.check(request("app-1"), limiter=k.feedback)
    assert e.value.status == 429 and "Retry-After" in e.value.headers
    k.check(request("app-2"), limiter=k.feedback)  # another key's bucket is full
    k.check(request("app-1"))  # and requests are not limited by feedback's bucket


def test_a_keyless_gateway_lets_anyone_call_but_no_one_is_trusted() -> None:
    k = keys(api_keys=SecretStr(""), trusted_keys=SecretStr(""))
    caller = k.check(request(None))
    assert k.open and caller.key_id == "" and not caller.trusted
