"""`rftloop up | down | status` for the local stack (no Docker needed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from infra.local.process import ManagedProcess
from infra.local.services import all_services
from infra.settings import LocalStackSettings


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    healthy: bool
    detail: str


def up(settings: LocalStackSettings, say: Callable[[str], None] = print) -> list[ManagedProcess]:
    """Start every service that is not running yet; harmless when all are up."""
    services = all_services(settings)
    for svc in services:
        say(f"{svc.name}: {svc.start(say)}")
    return services


def down(settings: LocalStackSettings, say: Callable[[str], None] = print) -> None:
    for svc in reversed(all_services(settings)):
        say(f"{svc.name}: {svc.stop()}")


def status(settings: LocalStackSettings) -> list[ComponentStatus]:
    out = []
    for svc in all_services(settings):
        healthy, detail = svc.status()
        out.append(ComponentStatus(svc.name, healthy, detail))
    return out
