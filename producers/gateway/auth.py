"""API keys, their roles, and per-key rate limits.

Three roles:
- **application** keys (``RFTLOOP_GATEWAY_API_KEYS``) make requests and rate their own requests;
- **trusted** keys (``RFTLOOP_GATEWAY_TRUSTED_KEYS``: evaluators, labelling tools, a benchmark app
  whose answers are known) may also rate any request and send ground truth
  (``metadata.reference`` / ``metadata.expect_regex``);
- the **admin** key only promotes and rolls back (it is not an API key).

Keys are compared as SHA-256 digests in constant time. A key's id (the first 12 hex digits of its
digest) names it in request ids and logs; the key itself is never stored. Rate limits are token
buckets per key and **per replica**: N replicas behind a balancer let a key through at up to N times
the configured rate.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Request

from infra.settings import GatewaySettings
from producers.gateway.api import ApiError
from producers.gateway.ratelimit import RateLimiter


@dataclass(frozen=True)
class Caller:
    key_id: str  # "" when the gateway runs without keys
    trusted: bool  # may rate any request and send ground truth
    admin: bool


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _keys(raw: str) -> list[str]:
    return [k.strip() for k in raw.split(",") if k.strip()]


class Keys:
    def __init__(self, settings: GatewaySettings) -> None:
        digest = lambda k: hashlib.sha256(k.encode()).digest()  # noqa: E731
        self._trusted = [digest(k) for k in _keys(settings.trusted_keys.get_secret_value())]
        self._apps = [digest(k) for k in settings.api_key_list()] + self._trusted
        self._admin = digest(settings.admin_key.get_secret_value())
        self.open = not self._apps  # no keys configured: anyone may call (local use)
        self.requests = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
        self.feedback = RateLimiter(settings.feedback_rate_limit_rps, settings.feedback_rate_limit_burst)

    @staticmethod
    def _matches(digest: bytes, hashes: list[bytes]) -> bool:
        return any(hmac.compare_digest(digest, h) for h in hashes)  # constant time per key

    def check(self, request: Request, *, admin: bool = False, limiter: RateLimiter | None = None) -> Caller:
        """The caller behind ``request``'s bearer key; 401 for a wrong key, 429 over its rate."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        digest = hashlib.sha256(token.encode()).digest()
        is_admin = bool(token) and hmac.compare_digest(digest, self._admin)
        if admin and not is_admin:
            raise ApiError(
                401,
                "missing or wrong API key (admin key required)",
                "authentication_error",
                "invalid_api_key",
            )
        if not admin and not self.open and not (token and self._matches(digest, self._apps)):
            raise ApiError(401, "missing or wrong API key", "authentication_error", "invalid_api_key")
        trusted = bool(token) and self._matches(digest, self._trusted)
        caller = Caller(key_id(token) if token else "", trusted, is_admin)
        if self.open and not token:
            return caller  # a local, keyless gateway: nothing to limit per key
        limit = limiter if limiter is not None else self.requests
        wait = limit.take(caller.key_id or "anonymous")
        if wait > 0:
            raise ApiError(
                429,
                f"rate limit of {limit.rate:g} requests/s (burst {limit.burst}) for this key "
                f"exceeded; retry in {wait:.2f} s",
                "rate_limit_error",
                "rate_limit_exceeded",
                headers={"Retry-After": str(max(1, round(wait + 0.5)))},
            )
        return caller


def require_trusted(caller: Caller, what: str) -> None:
    """403 unless ``caller`` holds a trusted key (evaluations: shadow versions, unrecorded requests)."""
    if not caller.trusted:
        raise ApiError(
            403,
            f"{what}: only trusted keys (RFTLOOP_GATEWAY_TRUSTED_KEYS) may run evaluations",
            "permission_error",
            "untrusted_evaluation",
        )
