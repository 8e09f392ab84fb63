"""Shadow versions: an adapter loaded on this gateway's engine with no traffic, for evaluation only.

The trainer gates a candidate, and samples its GRPO rollouts, on the engine users are served by
instead of starting an engine of its own (``consumers/trainer/gateway_engine.py``):

POST   /v1/shadows {"name": N, "path": P}   load the adapter directory P (inside
       RFTLOOP_GATEWAY_ADAPTER_ROOT) as N: 201 with the load time. Loading N again replaces it
       (the policy being trained changes its files). 409 when N names a version of model.versions.
DELETE /v1/shadows/{N}                      unload it: 200; 404 when it is not loaded.

Both need a trusted key (RFTLOOP_GATEWAY_TRUSTED_KEYS): evaluating is an evaluator's job, and a
shadow costs engine memory. A shadow is not on model.versions, gets no routed traffic and is not
listed in /v1/models. Only *evaluation requests* reach it: requests pinned to it
(``<served_name>:<N>``) with the ``X-Rftloop-Evaluation: <run>`` header, from a trusted key.

Evaluation requests (pinned to a shadow or to a live version) are served like any other, through
the same routes, checks and vLLM serving layer, but are **not recorded as events**: they are the
trainer's measurements, not users' traffic, and would otherwise enter the canary judge's figures
and the training data. /metrics counts them under the version label ``shadow`` (a label per shadow
would grow without bound) or their live version's name.

At most ``MAX_SHADOWS`` are loaded; loading one more unloads the oldest, so a trainer killed
mid-run leaves at most that many behind until later runs push them out. Shadows live on this
replica only: the trainer evaluates on the one gateway it is given.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from infra import adapters
from producers.gateway.api import ApiError
from producers.gateway.auth import require_trusted
from producers.gateway.router import Route, Router
from producers.gateway.serving import Serving

EVALUATION_HEADER = "x-rftloop-evaluation"
MAX_SHADOWS = 4
FIRST_LORA_ID = 1_000_000  # the version follower numbers published versions from 1


class ShadowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="the pinnable name")
    path: str = Field(min_length=1, description="an adapter directory inside the adapter root")


class Shadows:
    def __init__(
        self, serving: Serving, router: Router, adapter_root: Any, targets: Sequence[str] = ()
    ) -> None:
        self.serving, self.router, self.root, self.targets = serving, router, adapter_root, targets
        self.loaded: OrderedDict[str, Route] = OrderedDict()
        self._ids = itertools.count(FIRST_LORA_ID)
        self._lock = asyncio.Lock()  # loads and unloads one at a time (the engine's LoRA table)

    async def load(self, name: str, path: str) -> float:
        """Seconds the engine took to load it."""
        async with self._lock:
            if name not in self.loaded and self.router.known(name):
                raise ApiError(
                    409,
                    f"{name!r} is a version of model.versions; a shadow needs a name of its own",
                    code="version_exists",
                    param="name",
                )
            try:
                real = adapters.resolve_uri(path, self.root, self.targets)
            except adapters.AdapterRefused as exc:
                raise ApiError(400, str(exc), code="adapter_refused", param="path") from None
            if name in self.loaded:
                await self._unload(name)
            while len(self.loaded) >= MAX_SHADOWS:
                await self._unload(next(iter(self.loaded)))
            lora_id = next(self._ids)
            t0 = time.perf_counter()
            await self.serving.load_adapter(name, lora_id, str(real))
            self.loaded[name] = self.router.add_shadow(name, str(real), lora_id)
            return time.perf_counter() - t0

    async def unload(self, name: str) -> None:
        async with self._lock:
            if name not in self.loaded:
                raise ApiError(404, f"no shadow {name!r} is loaded here", code="shadow_not_found")
            await self._unload(name)

    async def _unload(self, name: str) -> None:
        route = self.loaded.pop(name)
        self.router.remove_shadow(name)
        await self.serving.unload_adapter(name, route.lora_id)


def add_shadow_routes(app: FastAPI, shadows: Shadows, keys: Any, parse: Any) -> None:
    @app.post("/v1/shadows")
    async def load(request: Request) -> Any:
        require_trusted(keys.check(request), "POST /v1/shadows")
        body: ShadowRequest = await parse(request, ShadowRequest)
        seconds = await shadows.load(body.name, body.path)
        model = shadows.serving.model_name(body.name)
        return JSONResponse(
            {"name": body.name, "model": model, "load_s": round(seconds, 3), "shadows": list(shadows.loaded)},
            status_code=201,
        )

    @app.delete("/v1/shadows/{name}")
    async def unload(name: str, request: Request) -> Any:
        require_trusted(keys.check(request), "DELETE /v1/shadows")
        await shadows.unload(name)
        return {"name": name, "unloaded": True, "shadows": list(shadows.loaded)}
