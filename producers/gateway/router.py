"""Traffic routing between model versions (pure logic).

The routing table maps each live version to a traffic weight. ``base`` (the
base model, no adapter) is the first incumbent. A published version joins with
the canary share and the incumbent keeps the rest; a promoted version takes all
traffic and becomes the incumbent; a rolled-back version gets none. A request
can pin a version; otherwise it is placed by a stable hash of its user or
session id (sticky: the same user sees the same version while weights hold),
or at random without one.
"""

from __future__ import annotations

import hashlib
import random
import threading
from dataclasses import dataclass


class UnknownVersion(KeyError):
    """A pinned version that is not live on this gateway."""


@dataclass
class Route:
    version: str
    weight: float
    adapter_path: str | None = None
    lora_id: int = 0


class Router:
    def __init__(self, canary_share: float = 0.1) -> None:
        self.canary_share = canary_share
        self.routes: dict[str, Route] = {"base": Route("base", 1.0)}
        self.incumbent = "base"
        self._lock = threading.Lock()

    def publish(self, version: str, adapter_path: str, lora_id: int, share: float | None = None) -> None:
        share = self.canary_share if share is None else share
        with self._lock:
            self.routes[version] = Route(version, 0.0, adapter_path, lora_id)
            self._set_canary(version, share)

    def _set_canary(self, version: str, share: float) -> None:
        others = [
            r for r in self.routes.values() if r.version not in (version, self.incumbent) and r.weight > 0
        ]
        rest = max(0.0, 1.0 - share - sum(r.weight for r in others))
        self.routes[version].weight = share
        self.routes[self.incumbent].weight = rest

    def ramp(self, version: str, share: float) -> None:
        """Raise (or set) a live canary's share; the incumbent gives up the difference."""
        with self._lock:
            if version not in self.routes:
                raise UnknownVersion(version)
            if version == self.incumbent or self.routes[version].weight == 0.0:
                return  # decided meanwhile: a ramp never revives a rolled-back version
            self._set_canary(version, share)

    def promote(self, version: str) -> None:
        with self._lock:
            if version not in self.routes:
                raise UnknownVersion(version)
            for r in self.routes.values():
                r.weight = 0.0
            self.routes[version].weight = 1.0
            self.incumbent = version

    def rollback(self, version: str, fallback: str | None = None) -> None:
        with self._lock:
            if version not in self.routes:
                raise UnknownVersion(version)
            freed = self.routes[version].weight
            self.routes[version].weight = 0.0
            if version == self.incumbent:
                self.incumbent = fallback if fallback in self.routes else "base"
            self.routes[self.incumbent].weight += freed

    def weights(self) -> dict[str, float]:
        return {v: r.weight for v, r in self.routes.items()}

    def choose(self, sticky_key: str | None = None, pinned: str | None = None) -> Route:
        with self._lock:
            if pinned is not None:
                route = self.routes.get(pinned)
                if route is None:
                    raise UnknownVersion(pinned)
                return route
            live = sorted((r for r in self.routes.values() if r.weight > 0), key=lambda r: r.version)
            if not live:
                return self.routes[self.incumbent]
            total = sum(r.weight for r in live)
            if sticky_key:
                h = int.from_bytes(hashlib.blake2b(sticky_key.encode(), digest_size=8).digest(), "big")
                point = (h / 2**64) * total
            else:
                point = random.random() * total
            for r in live:
                point -= r.weight
                if point < 0:
                    return r
            return live[-1]
