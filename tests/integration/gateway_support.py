"""A real gateway process (tiny random Llama on vLLM-CPU) on isolated topics, and adapters to publish to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import openai

from infra import adapters
from infra import registry as registry_mod
from infra.kafka import ensure_topics, produce, producing
from infra.local.process import free_port
from infra.serde import TopicSerde
from schemas.events import ModelVersionEvent, VersionEventKind
from schemas.topics import COMPLETED, FEEDBACK, REQUESTED, VERSIONS, TopicSpec
from tests.integration.streams_support import read_topic

ROOT = Path(__file__).resolve().parents[2]
SERVED = "smollm2-135m-instruct"
KEY, ADMIN = "test-key", "test-admin"
OTHER, TRUSTED = "other-app-key", "evaluator-key"  # a second application; a trusted rater


@dataclass
class Gateway:
    url: str
    suffix: str
    serde: dict[str, Any]
    adapter_root: Path
    log: Path
    kafka: Any

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120)

    def http(self, key: str = KEY) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def events(self, spec: Any) -> list[Any]:
        topic, serde = self.serde[spec.name]
        return read_topic(self.kafka, topic.name, serde, idle_s=1.5)


def _topics(stack: Any, suffix: str, extra_topics: tuple[TopicSpec, ...]) -> dict[str, Any]:
    reg = registry_mod.client(stack.registry)
    serde = {}
    for spec in (REQUESTED, COMPLETED, FEEDBACK, VERSIONS, *extra_topics):
        topic = replace(spec, name=spec.name + suffix)
        ensure_topics(stack.kafka, only=[topic])
        registry_mod.register(reg, topic)
        serde[spec.name] = (topic, TopicSerde(reg, topic))
    return serde


def _start(
    stack: Any, tmp: Path, suffix: str, env: dict[str, str] | None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    full_env = {
        **os.environ,
        **stack.env(),
        "RFTLOOP_GATEWAY_TOPIC_SUFFIX": suffix,
        "RFTLOOP_GATEWAY_ADAPTER_ROOT": str(tmp / "adapters"),
        "RFTLOOP_GATEWAY_API_KEYS": KEY,
        "RFTLOOP_GATEWAY_ADMIN_KEY": ADMIN,
        "RFTLOOP_GATEWAY_MAX_MODEL_LEN": "1024",
        "RFTLOOP_GATEWAY_MAX_TOKENS_LIMIT": "128",
        **(env or {}),
    }
    tmp.mkdir(parents=True, exist_ok=True)
    with open(tmp / "gateway.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "gateway", "--model", "tiny", "--port", str(port)],
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, deadline: float) -> None:
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"gateway did not start:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).json().get("versions_caught_up"):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextmanager
def running_gateways(
    stack: Any,
    replicas: list[tuple[Path, dict[str, str]]],
    suffix: str | None = None,
    extra_topics: tuple[TopicSpec, ...] = (),
) -> Iterator[list[Gateway]]:
    """Start one `rftloop gateway --model tiny` per (tmp dir, env) on the same fresh `<topic><suffix>`
    topics, all at once (their engines start side by side), and stop them on exit."""
    suffix = suffix or f"-gw{uuid.uuid4().hex[:6]}"
    serde = _topics(stack, suffix, extra_topics)
    started: list[tuple[subprocess.Popen[bytes], str, Path]] = []
    try:
        for tmp, env in replicas:
            proc, url = _start(stack, tmp, suffix, env)
            started.append((proc, url, tmp))
        deadline = time.monotonic() + 240 + 60 * (len(replicas) - 1)
        for proc, url, tmp in started:
            _wait_ready(proc, url, tmp / "gateway.log", deadline)
        yield [
            Gateway(url, suffix, serde, tmp / "adapters", tmp / "gateway.log", stack.kafka)
            for _, url, tmp in started
        ]
    finally:
        for proc, _, _ in started:
            _stop(proc)


@contextmanager
def running_gateway(
    stack: Any,
    tmp: Path,
    env: dict[str, str] | None = None,
    suffix: str | None = None,
    extra_topics: tuple[TopicSpec, ...] = (),
) -> Iterator[Gateway]:
    """Start `rftloop gateway --model tiny` on fresh `<topic><suffix>` topics; stop it on exit."""
    with running_gateways(stack, [(tmp, env or {})], suffix, extra_topics) as [gw]:
        yield gw


def make_adapter(root: Path, name: str, scale: float | None = None) -> tuple[Path, str]:
    """A LoRA adapter for the tiny model; `scale` sets lora_B ~ N(0, scale): a broken version."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from infra.models import prepare_tiny
    from infra.settings import LocalStackSettings

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(prepare_tiny(LocalStackSettings().cache_dir))
    model = get_peft_model(
        base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    if scale is not None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, scale)
    path = root / name
    model.save_pretrained(path)
    return path, adapters.adapter_sha256(path)


def publish(gateway: Gateway, version: str, uri: str, sha: str | None, share: float | None = 0.5) -> float:
    """A ModelVersionPublished for `version` on the gateway's versions topic; returns time.monotonic()."""
    topic, serde = gateway.serde[VERSIONS.name]
    event = ModelVersionEvent(
        producer="test",
        kind=VersionEventKind.published,
        model=SERVED,
        version=version,
        parent_version="base",
        adapter_uri=uri,
        adapter_sha256=sha,
        method="grpo",
        decision="canary",
        traffic_share=share,
    )
    with producing(gateway.kafka) as p:
        produce(p, topic.name, topic.key_of(event), serde.encode_event(event))
    return time.monotonic()
