"""`rftloop up | down | status` for the local stack (no Docker needed)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from infra.local.process import ManagedProcess
from infra.local.services import all_services, bootstrap_servers
from infra.settings import LocalStackSettings


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    healthy: bool
    detail: str


def up(settings: LocalStackSettings, say: Callable[[str], None] = print) -> list[ManagedProcess]:
    """Start every service that is not running yet; harmless when all are up."""
    services = all_services(settings)
    kafka = [svc for svc in services if svc.name.startswith("kafka")]
    # a cluster's nodes elect their controller together: start all, then wait for each
    for svc in kafka:
        say(f"{svc.name}: {svc.start(say, wait=len(kafka) == 1)}")
    if len(kafka) > 1:
        for svc in kafka:
            svc.wait_ready(say)
        say(f"kafka: {len(kafka)} brokers ready ({bootstrap_servers(settings)})")
    for svc in services:
        if svc not in kafka:
            say(f"{svc.name}: {svc.start(say)}")
    return services


def down(settings: LocalStackSettings, say: Callable[[str], None] = print, timeout_s: float = 30.0) -> None:
    """Stop every service: SIGTERM, then SIGKILL once ``timeout_s`` has passed."""
    services = all_services(settings)
    kafka = [svc for svc in services if svc.name.startswith("kafka")]
    for svc in reversed(services):
        if svc not in kafka:
            say(f"{svc.name}: {svc.stop(timeout_s)}")
    # A cluster's nodes stop together: the last one alone would wait for a controller quorum.
    with ThreadPoolExecutor(max_workers=len(kafka)) as pool:
        for svc, how in zip(kafka, pool.map(lambda s: s.stop(timeout_s), kafka), strict=True):
            say(f"{svc.name}: {how}")


def status(settings: LocalStackSettings) -> list[ComponentStatus]:
    out = []
    for svc in all_services(settings):
        healthy, detail = svc.status()
        out.append(ComponentStatus(svc.name, healthy, detail))
    return out
