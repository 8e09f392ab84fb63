"""Traffic routing between model versions (pure logic).

The routing table maps each loaded version to a traffic weight, derived from the one fold of
``model.versions`` (``infra.versions``): ``base`` (the base model, no adapter) is the first
incumbent; a published version serves its canary share (the event's, else
``RFTLOOP_GATEWAY_CANARY_SHARE``) and the incumbent the rest; a promoted version takes all traffic
and becomes the incumbent; a rolled-back one gets none, and if it was the incumbent its parent
serves again. A request can pin a version; otherwise it is placed by a stable hash of its user or
session id (sticky: the same user sees the same version while weights hold), or at random without one.
"""

from __future__ import annotations

import hashlib
import random
import threading
from dataclasses import dataclass

from infra.versions import BASE, VersionFold
from schemas.events import ModelVersionEvent, VersionEventKind


class UnknownVersion(KeyError):
    """A pinned version that is not live on this gateway."""


@dataclass
class Route:
    version: str
    weight: float
    adapter_path: str | None = None
    lora_id: int = 0
    shadow: bool = False  # loaded for evaluation only (``shadows.py``): never routed, never listed


class Router:
    """Weights over the versions this gateway has loaded, derived from the one fold of
    ``model.versions`` (``infra.versions``), so the gateway, the judge and the trainer agree on who
    is incumbent and which canaries serve what share — a manual rollback of the incumbent included.

    The incumbent takes what the live canaries leave. A version this gateway could not load gets no
    traffic here: a canary it refused is skipped; an incumbent it never loaded leaves the last one it
    could serve in place."""

    def __init__(self, canary_share: float = 0.1) -> None:
        self.canary_share = canary_share
        self.fold = VersionFold()
        self.routes: dict[str, Route] = {BASE: Route(BASE, 1.0)}
        self.incumbent = BASE
        self._lock = threading.Lock()

    def add(self, version: str, adapter_path: str, lora_id: int) -> None:
        """``version``'s adapter is loaded in the engine (its published event was applied first)."""
        with self._lock:
            self.routes[version] = Route(version, 0.0, adapter_path, lora_id)
            self._reweigh()

    def add_shadow(self, name: str, adapter_path: str, lora_id: int) -> Route:
        """A shadow (``shadows.py``): served only to evaluation requests pinned to it."""
        with self._lock:
            route = self.routes[name] = Route(name, 0.0, adapter_path, lora_id, shadow=True)
            return route

    def remove_shadow(self, name: str) -> Route | None:
        with self._lock:
            route = self.routes.get(name)
            if route is None or not route.shadow:
                return None
            return self.routes.pop(name)

    def known(self, name: str) -> bool:
        """Whether ``name`` is a version of the fold (any state) or loaded here."""
        with self._lock:
            return name in self.routes or any(
                name in m.published or name in m.ended or name in m.canaries
                for m in self.fold.models.values()
            )

    def apply(self, event: ModelVersionEvent) -> None:
        """Fold one event of this gateway's model; raises UnknownVersion for a decision on a version
        this gateway never loaded (the fold keeps it all the same)."""
        with self._lock:
            self.fold.apply(event)
            self._reweigh()
        decided = event.kind in (
            VersionEventKind.promoted,
            VersionEventKind.ramped,
            VersionEventKind.rolled_back,
        )
        if decided and event.version not in self.routes:
            raise UnknownVersion(event.version)

    def _reweigh(self) -> None:
        models = list(self.fold.models.values())
        state = models[0] if models else None  # one gateway serves one model (the follower filters)
        if state is not None and state.incumbent in self.routes:
            self.incumbent = state.incumbent
        canaries = {} if state is None else state.canaries
        for r in self.routes.values():
            r.weight = 0.0
        given = 0.0
        for version, c in canaries.items():
            if version in self.routes and version != self.incumbent:
                share = self.canary_share if c.share is None else c.share
                self.routes[version].weight = share
                given += share
        self.routes[self.incumbent].weight = max(0.0, 1.0 - given)

    def weights(self) -> dict[str, float]:
        return {v: r.weight for v, r in self.routes.items()}

    def ended(self, version: str) -> VersionEventKind | None:
        """rolled_back / rejected when ``version`` must no longer serve (a replaced incumbent may)."""
        for state in self.fold.models.values():
            kind = state.ended.get(version)
            if kind in (VersionEventKind.rolled_back, VersionEventKind.rejected):
                return kind
        return None

    def live(self) -> dict[str, float]:
        """The versions serving traffic now (the incumbent and its canaries), with their shares."""
        return {v: w for v, w in self.weights().items() if w > 0 or v == self.incumbent}

    def choose(
        self, sticky_key: str | None = None, pinned: str | None = None, evaluation: bool = False
    ) -> Route:
        """A pinned version if it serves (a shadow only for an evaluation), else a routed one."""
        with self._lock:
            if pinned is not None:
                route = self.routes.get(pinned)
                if route is None or self.ended(pinned) is not None or (route.shadow and not evaluation):
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
