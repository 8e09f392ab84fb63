"""Request ids that say which version served them, so feedback is attributed by any replica.

Feedback names a request by its id. A gateway that remembered "request id -> version" in memory
attributed feedback only when the same process served the request: behind a load balancer, or
after a restart, it sent version ``unknown`` and the judge never saw it. Instead the version travels
inside the id the client already holds: ``chatcmpl-<uuid>.<version, base64url>.<key id>.<tag>``,
where ``key id`` names the API key that made the request (so feedback on it is taken only from that
key, or from a trusted rater), a request that asked ``n`` > 1 adds ``.<n>`` (so feedback can name only
a choice the response has), and ``tag`` is an HMAC-SHA256 of the rest under a key every replica shares (``RFTLOOP_GATEWAY_REQUEST_ID_KEY``,
else derived from the API keys), so a client cannot credit feedback to a version that did not serve
it by making up an id. Any replica, restarted or not, reads the version back from the id alone.

Hand-written because it is a dozen lines over the standard library's ``hmac``; a token library
(itsdangerous, JWT) would add a dependency and a longer id for the same check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from typing import NamedTuple

TAG_BYTES = 9  # 72 bits: forging one id takes ~2^71 tries against a replica's rate limit


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signed(NamedTuple):
    """What a signed request id says about its request."""

    version: str
    key_id: str
    choices: int  # n: how many choices the response has


class RequestIds:
    def __init__(self, key: bytes) -> None:
        self._key = hashlib.sha256(b"rftloop-request-id|" + key).digest()

    def _tag(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:TAG_BYTES])

    def new(self, prefix: str, version: str, key_id: str = "", choices: int = 1) -> str:
        """A fresh id for a request served by ``version`` for the API key named ``key_id``, with
        ``choices`` (the request's n) choices."""
        body = f"{prefix}-{uuid.uuid4().hex}.{_b64(version.encode())}.{_b64(key_id.encode())}"
        if choices > 1:
            body += f".{choices}"
        return f"{body}.{self._tag(body)}"

    def read(self, request_id: str) -> Signed | None:
        """What ``request_id`` says (version, key id, choices); None for an id this key did not
        sign (another key, a made-up or an SDK id)."""
        body, _, tag = request_id.rpartition(".")
        if not body or "." not in body or not hmac.compare_digest(tag, self._tag(body)):
            return None
        parts = body.split(".")
        try:
            version = _unb64(parts[1]).decode()
            key_id = _unb64(parts[2]).decode() if len(parts) > 2 else ""
            choices = int(parts[3]) if len(parts) > 3 else 1
        except (ValueError, UnicodeDecodeError, IndexError):
            return None
        return Signed(version, key_id, choices)

    def version_of(self, request_id: str) -> str | None:
        """The version that served ``request_id``, or None (see ``read``)."""
        got = self.read(request_id)
        return got.version if got else None
