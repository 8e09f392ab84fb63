"""`rftloop bench`: run benchmarks beside their peers, record, and render BENCHMARKS.md.

Each benchmark has a stable dotted name and measures our code and its peer in
the same run on the same machine. Results are appended to bench/results.json
as ``{name, value, unit, peer, peer_value, ratio, goal, met, method, at, machine}``;
BENCHMARKS.md shows the latest result of each name.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results.json"
REPORT = BENCH_DIR.parent / "BENCHMARKS.md"


@dataclass
class Result:
    name: str
    value: float
    unit: str
    peer: str
    peer_value: float | None
    goal: str
    method: str
    higher_is_better: bool = True
    goal_ratio: float | None = None  # goal on value/peer_value (or peer/value when lower is better)
    goal_value: float | None = None  # absolute goal on value
    # Where the goal is missed: why it cannot be met on this machine, from a figure of the same run
    # (computed by the benchmark, never written in by hand); None where the run proves no such thing.
    why_not_met: str | None = None

    @property
    def ratio(self) -> float | None:
        if not self.peer_value or not self.value:
            return None
        return self.value / self.peer_value if self.higher_is_better else self.peer_value / self.value

    @property
    def met(self) -> bool | None:
        checks = []
        if self.goal_ratio is not None and self.ratio is not None:
            checks.append(self.ratio >= self.goal_ratio)
        if self.goal_value is not None:
            checks.append(
                self.value >= self.goal_value if self.higher_is_better else self.value <= self.goal_value
            )
        return all(checks) if checks else None

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            ratio=None if self.ratio is None else round(self.ratio, 3),
            met=self.met,
            at=datetime.now(UTC).isoformat(timespec="seconds"),
            machine=machine(),
        )
        return d


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem_gib:.0f} GiB, {cpu}, Python {platform.python_version()}"


class Context:
    """Lazily started local stack (own ports, temp state dir) shared by the benchmarks of one run."""

    def __init__(self) -> None:
        self._stack: Any = None
        self._tmp = tempfile.TemporaryDirectory(prefix="rftloop-bench-")

    @property
    def stack(self) -> Any:
        if self._stack is None:
            from infra.local import stack
            from infra.local.process import free_port
            from infra.settings import ClickHouseSettings, KafkaSettings, LocalStackSettings, RegistrySettings

            local = LocalStackSettings(
                state_dir=Path(self._tmp.name) / "state",
                kafka_port=free_port(),
                kafka_controller_port=free_port(),
                registry_port=free_port(),
                clickhouse_port=free_port(),
            )
            print("bench: starting a private stack ...", flush=True)
            stack.up(local, say=lambda m: None)
            self._stack = {
                "local": local,
                "kafka": KafkaSettings(bootstrap_servers=f"127.0.0.1:{local.kafka_port}"),
                "registry": RegistrySettings(url=f"http://127.0.0.1:{local.registry_port}/apis/ccompat/v7"),
                "clickhouse": ClickHouseSettings(url=f"http://127.0.0.1:{local.clickhouse_port}"),
            }
        return self._stack

    def close(self) -> None:
        if self._stack is not None:
            from infra.local import stack

            stack.down(self._stack["local"], say=lambda m: None)
        self._tmp.cleanup()


Benchmark = Callable[[Context], list[Result]]


def registry() -> dict[str, Benchmark]:
    from bench import (
        gate_benchmark,
        gateway_benchmark,
        infra_benchmarks,
        judge_benchmark,
        lora_benchmark,
        privacy_benchmark,
        scale_benchmark,
        serde_benchmark,
        sink_benchmark,
        streams_benchmark,
        trainer_benchmark,
    )

    return {
        "infra.kafka_produce_mb_s": infra_benchmarks.kafka_produce,
        "infra.clickhouse_insert_rows_s": infra_benchmarks.clickhouse_insert,
        "schemas.serde_events_per_s": serde_benchmark.serde_events,
        "sink.rows_per_s": sink_benchmark.sink_rows,
        "streams.events_per_s": streams_benchmark.events_per_s,
        "streams.join_events_per_s": streams_benchmark.join_events_per_s,
        "streams.evaluate_events_per_s": streams_benchmark.evaluate_events_per_s,
        "e2e.freshness_ms": streams_benchmark.freshness_ms,
        "scale.streams_events_per_s": scale_benchmark.streams_scaling,
        "scale.sink_rows_per_s": scale_benchmark.sink_scaling,
        "producers.sdk_log_call_us": gateway_benchmark.sdk_log_call,
        "gateway": gateway_benchmark.gateway,
        "lora": lora_benchmark.lora_latency,
        "trainer": trainer_benchmark.training,
        "judge": judge_benchmark.judge_figures,
        "sequential_gate": gate_benchmark.gate_figures,
        "privacy": privacy_benchmark.redaction,
    }


def load_results() -> list[dict[str, Any]]:
    if RESULTS.exists():
        return list(json.loads(RESULTS.read_text()))
    return []


def _num(v: float) -> str:
    """1,234.5 for large figures; three significant digits for small ones (a 0.017 share is not 0.0)."""
    return f"{v:,.1f}" if abs(v) >= 100 or v == int(v) else f"{v:.3g}"


# Names no benchmark records any more, and why: their runs stay in results.json (the history), and
# BENCHMARKS.md no longer shows them as if current.
RETIRED = {
    "producers.sdk_log_call_us.process": "the process sender became the SDK's default "
    "(producers.sdk_log_call_us); the thread is producers.sdk_log_call_us.thread",
}


def render(results: list[dict[str, Any]]) -> str:
    latest: dict[str, dict[str, Any]] = {}
    for r in results:
        if r["name"] not in RETIRED:
            latest[r["name"]] = r
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`rftloop bench`) from `bench/results.json`: the latest run of each",
        "benchmark. Ours and the peer are measured in the same run on the same machine. Do not edit by hand.",
        "",
        "| benchmark | ours | peer | peer value | ratio | goal | met | machine, date |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(latest):
        r = latest[name]
        met = {True: "yes", False: "**no**", None: "—"}[r["met"]]
        pv = "—" if r["peer_value"] is None else _num(r["peer_value"])
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        lines.append(
            f"| `{name}` | {_num(r['value'])} {r['unit']} | {r['peer']} | {pv} | {ratio} | {r['goal']} | {met} "
            f"| {r['machine'].split(',')[0]}, {r['at'][:10]} |"
        )
    missed = [name for name in sorted(latest) if latest[name]["met"] is False]
    if missed:
        lines += ["", "## Goals not met, and why", ""]
        for name in missed:
            why = latest[name].get("why_not_met") or (
                "the run proves no limit of this machine: the goal is missed by our code or by chance "
                "(README's figures table discusses each such figure)"
            )
            lines.append(f"- `{name}`: {why}.")
    lines += ["", "## Method", ""]
    for name in sorted(latest):
        lines.append(f"- `{name}`: {latest[name]['method']}")
    lines.append("")
    return "\n".join(lines)


def record(found: list[Result]) -> None:
    """Append figures measured outside `rftloop bench` (e.g. by `make demo`) and re-render the report."""
    results = load_results() + [r.record() for r in found]
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    REPORT.write_text(render(results))


def main(names: list[str], list_only: bool = False) -> int:
    benches = registry()
    if list_only:
        for n in benches:
            print(n)
        return 0
    chosen = [n for n in benches if not names or any(n == x or n.startswith(x) for x in names)]
    if not chosen:
        print(f"no benchmark matches {names}; known: {', '.join(benches)}")
        return 2
    ctx = Context()
    results = load_results()
    try:
        for n in chosen:
            print(f"bench: {n} ...", flush=True)
            t0 = time.perf_counter()
            for r in benches[n](ctx):
                rec = r.record()
                results.append(rec)
                RESULTS.write_text(json.dumps(results, indent=1) + "\n")
                ratio = f", ratio {rec['ratio']}" if rec["ratio"] is not None else ""
                print(
                    f"  {r.name}: {_num(r.value)} {r.unit} vs {r.peer} {r.peer_value}{ratio} "
                    f"(goal {r.goal}: {'met' if rec['met'] else 'NOT met' if rec['met'] is False else 'n/a'})",
                    flush=True,
                )
            print(f"  ({time.perf_counter() - t0:.0f}s)", flush=True)
    finally:
        ctx.close()
        REPORT.write_text(render(results))
    print(f"bench: wrote {RESULTS.relative_to(BENCH_DIR.parent)} and {REPORT.name}")
    from bench import capacity

    try:
        capacity.main()  # SCALING.md's model follows the figures
    except KeyError as exc:
        print(f"bench: SCALING.md not rewritten: no figure for {exc} yet (run `make bench`)")
    return 0
