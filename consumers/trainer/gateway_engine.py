"""The run's generations on a serving gateway's engine: the gate and the GRPO rollouts (shadow versions).

With ``RFTLOOP_TRAINER_GATEWAY_URL`` set, a run starts no vLLM engine of its own (about 50 s and
3 GB here). Every adapter it needs answers from (the candidate, each GRPO step's policy) is loaded
on that gateway as a *shadow version* (``POST /v1/shadows``: no traffic, not on model.versions,
not recorded; ``producers/gateway/shadows.py``); the incumbent is pinned by its version name, the
one users are served. Requests go through the gateway's own ``/v1/completions`` path (auth,
routing, vLLM's serving layer, the same engine) with the ``X-Rftloop-Evaluation`` header, so the
gate's latency is the serving path's, and nothing the run sends becomes users' traffic in the
judge's figures or the training data.

The prompt is the chat template applied by the base model's tokenizer, as the gateway applies it
to chat requests; one HTTP request per prompt, sent side by side (``concurrency``) so the engine
batches them as it batches users; repeats of one prompt (a GRPO group) are one request with ``n``
(one prefill for the group). Token ids and the sampled tokens' log-probabilities come from vLLM
(``return_token_ids``, ``logprobs: 0``): what TRL's ``rollout_func`` needs. The interface is
``consumers.trainer.engine.Engine``'s, so the gate and GRPO take either.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import httpx

from consumers.trainer.data import Sample
from consumers.trainer.engine import Answer, render_prompt

EVALUATION_HEADER = "X-Rftloop-Evaluation"  # producers/gateway/shadows.py


class GatewayUnavailable(RuntimeError):
    """The gateway could not be reached, or kept failing (5xx, 429), through every retry: retriable
    (``rftloop trainer`` backs off and runs again)."""


class GatewayRefused(RuntimeError):
    """The gateway refused a request (4xx): a key that is not trusted there, an adapter outside its
    root, ... — a configuration to fix, named in the message."""


class GatewayEngine:
    def __init__(
        self,
        url: str,
        key: str,
        served_name: str,
        base_path: str,
        run: str,
        versions: dict[str, str] | None = None,
        concurrency: int = 16,
        timeout_s: float = 300.0,
    ) -> None:
        """``versions``: adapter directory -> the live version the gateway serves from it (pinned,
        not loaded again); ``run`` names the shadows and the evaluation header."""
        from transformers import AutoTokenizer

        self.url, self.served, self.run = url.rstrip("/"), served_name, run
        self.http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}", EVALUATION_HEADER: run},
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency),
        )
        self.tokenizer = AutoTokenizer.from_pretrained(base_path)
        self.versions = dict(versions or {})
        self.concurrency = concurrency
        self._ids = itertools.count(1)
        self._shadows: dict[str, str] = {}  # adapter path -> shadow name loaded from it

    def prompt(self, sample: Sample | list[dict[str, str]]) -> str:
        return render_prompt(self.tokenizer, sample)

    def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        for attempt in range(8):
            try:
                r = self.http.request(method, path, **kw)
            except httpx.TransportError as exc:
                if attempt == 7:
                    raise GatewayUnavailable(f"{self.url}{path}: {exc}") from exc
                time.sleep(min(5.0, 0.5 * 2**attempt))
                continue
            if (r.status_code == 429 or r.status_code >= 500) and attempt < 7:  # busy or restarting
                time.sleep(float(r.headers.get("retry-after", min(5.0, 0.5 * 2**attempt))))
                continue
            if 400 <= r.status_code < 500 and r.status_code != 429:
                raise GatewayRefused(
                    f"{method} {self.url}{path} answered {r.status_code} {r.text[:500]} "
                    "(RFTLOOP_TRAINER_GATEWAY_URL; RFTLOOP_TRAINER_GATEWAY_KEY must be one of its trusted keys)"
                )
            if r.status_code >= 400:
                break
            return cast(dict[str, Any], r.json())
        raise GatewayUnavailable(
            f"{method} {self.url}{path}: still failing after 8 tries (RFTLOOP_TRAINER_GATEWAY_URL)"
        )

    def model(self, path: str | None, fresh: bool = False) -> str:
        """The model name to pin for ``path`` (None: the base model), loading a shadow if needed.
        ``fresh``: its files changed (the policy being trained): load it again under a new name."""
        if path is None:
            return f"{self.served}:base"
        if path in self.versions:
            return f"{self.served}:{self.versions[path]}"
        if fresh or path not in self._shadows:
            old = self._shadows.pop(path, None)
            name = f"{self.run}-{next(self._ids)}"
            self._call("POST", "/v1/shadows", json={"name": name, "path": path})
            self._shadows[path] = name
            if old is not None:
                self._call("DELETE", f"/v1/shadows/{old}")
        return f"{self.served}:{self._shadows[path]}"

    def generate(
        self,
        prompts: list[str],
        adapter: str | None,
        max_tokens: int,
        temperature: float,
        *,
        fresh: bool = False,
    ) -> list[Answer]:
        """One answer per prompt, in order (repeat a prompt for several). Runs of one prompt are
        asked as one request with ``n`` (one prefill for the group, as GRPO's groups and the
        screening repeat each prompt); the requests are sent side by side. At temperature 0 a run
        is asked once and its answer repeated: greedy answers are all the same, and vLLM refuses
        ``n`` > 1 with greedy sampling (two users asked the gate's held-out set the same question,
        next to each other, and make demo run 18 failed on that 400)."""
        model = self.model(adapter, fresh)
        runs = [(p, len(list(g))) for p, g in itertools.groupby(prompts)]

        def one(run: tuple[str, int]) -> list[Answer]:
            prompt, repeats = run
            n = 1 if temperature == 0 else repeats
            body = self._call(
                "POST",
                "/v1/completions",
                json={
                    "model": model,
                    "prompt": prompt,
                    "n": n,
                    "max_tokens": max_tokens,
                    "temperature": temperature,
                    "logprobs": 0,
                    "return_token_ids": True,
                },
            )
            out = []
            for c in sorted(body["choices"], key=lambda c: int(c.get("index", 0))):
                ids = list(c.get("token_ids") or [])
                logprobs = [float(x or 0.0) for x in (c.get("logprobs") or {}).get("token_logprobs") or []]
                out.append(
                    Answer(str(c.get("text") or ""), list(c.get("prompt_token_ids") or []), ids, logprobs)
                )
            if len(out) != n:
                raise GatewayUnavailable(f"{self.url}/v1/completions: asked n={n}, got {len(out)} choices")
            return out * repeats if n == 1 else out

        with ThreadPoolExecutor(min(self.concurrency, max(1, len(runs)))) as pool:
            return [a for answers in pool.map(one, runs) for a in answers]

    def close(self) -> None:
        """Unload this run's shadows (the gateway also drops the oldest when it holds too many)."""
        for name in list(self._shadows.values()):
            # gone already, or the gateway is down: it holds no shadow across a restart
            with contextlib.suppress(GatewayUnavailable, GatewayRefused):
                self._call("DELETE", f"/v1/shadows/{name}")
        self._shadows.clear()
        self.http.close()
