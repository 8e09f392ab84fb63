"""The demo's simulated users: arithmetic questions through the OpenAI API, thumbs from correctness."""

from __future__ import annotations

import concurrent.futures
import random
import time
from collections.abc import Callable

import httpx
from rich.progress import Progress, TaskID

from infra import rewards

KEY = "rftloop-demo-key"


def question(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} plus {b}? Answer with just the number.", a + b


def correct(text: str, answer: int) -> bool:
    """What the simulated user checks: the same rule as the number_match evaluator."""
    return rewards.number_match(rewards.EvalInput(prompt="", completion=text, reference=str(answer))) == 1.0


class Workload:
    """Simulated users: sticky user ids, thumbs from correctness (90 % of them give feedback)."""

    def __init__(self, url: str, served: str, seed: int = 7) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300)
        self.served = served
        self.rng = random.Random(seed)
        self.sent = 0
        self.by_version: dict[str, list[bool]] = {}
        self.first_served: dict[str, float] = {}  # version -> time.time() of its first response

    def one(self, user: str, question: str, answer: int) -> None:
        r = self.http.post(
            "/v1/chat/completions",
            json={
                "model": self.served,
                "user": user,
                "max_tokens": 16,
                "temperature": 0,
                "messages": [{"role": "user", "content": question}],
                "metadata": {"reference": str(answer)},
            },
        )
        if r.status_code != 200:
            return
        body = r.json()
        ok = correct(body["choices"][0]["message"]["content"], answer)
        version = r.headers.get("x-rftloop-version", "base")
        self.first_served.setdefault(version, time.time())
        self.by_version.setdefault(version, []).append(ok)
        if self.rng.random() < 0.9:
            self.http.post(
                "/v1/feedback", json={"request_id": body["id"], "kind": "thumbs", "value": 1 if ok else -1}
            )

    def drive(self, n: int, progress: Progress, label: str, until: Callable[[], bool] | None = None) -> None:
        task = progress.add_task(label, total=n)
        jobs = []
        for _ in range(n):
            q, a = question(self.rng)
            jobs.append((f"user{self.rng.randint(0, 199)}", q, a))
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = []
            for job in jobs:
                futures.append(pool.submit(self.one, *job))
            try:
                self._collect(futures, progress, task, label, until)
            except BaseException:  # Ctrl-C, SIGTERM: drop the queued requests, do not send them all
                pool.shutdown(wait=False, cancel_futures=True)
                raise

    def _collect(
        self,
        futures: list[concurrent.futures.Future[None]],
        progress: Progress,
        task: TaskID,
        label: str,
        until: Callable[[], bool] | None,
    ) -> None:
        for f in futures:
            f.result()
            self.sent += 1
            progress.advance(task)
            if until is not None and until():
                for rest in futures:
                    rest.cancel()
                progress.update(task, total=progress.tasks[task].completed, description=label + " (decided)")
                break
