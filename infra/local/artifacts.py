"""Fetch the Kafka jars and the Apicurio Registry distribution with Maven, once.

Both land in the cache dir (outside the clone), keyed by version, so fresh clones
and CI runs reuse them; Maven's own ~/.m2 cache makes a re-fetch cheap too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from infra.local.process import ServiceError
from infra.settings import ConfigError, LocalStackSettings

_POM = Path(__file__).resolve().parents[1] / "jars" / "pom.xml"


def _mvn(settings: LocalStackSettings, args: list[str], what: str) -> None:
    mvn = settings.require_tool("mvn")
    proc = subprocess.run([mvn, "-B", "-q", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ServiceError(f"maven could not fetch {what}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def kafka_lib(settings: LocalStackSettings) -> Path:
    """Directory of the Kafka broker's jars (kafka_2.13, tools, log4j2 + slf4j 1.7 binding)."""
    lib = settings.cache_dir / f"kafka-{settings.kafka_version}" / "lib"
    stamp = lib / ".complete"
    if not stamp.exists():
        print(f"==> fetching Kafka {settings.kafka_version} jars with Maven into {lib}", flush=True)
        _mvn(
            settings,
            [
                "-f",
                str(_POM),
                f"-Dkafka.version={settings.kafka_version}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={lib}",
                "-DincludeScope=runtime",
            ],
            f"Kafka {settings.kafka_version}",
        )
        stamp.touch()
    return lib


def apicurio_home(settings: LocalStackSettings) -> Path:
    """Unpacked Apicurio Registry (Quarkus app: quarkus-run.jar)."""
    home = settings.cache_dir / f"apicurio-{settings.apicurio_version}"
    stamp = home / ".complete"
    if not stamp.exists():
        print(f"==> fetching Apicurio Registry {settings.apicurio_version} with Maven", flush=True)
        home.mkdir(parents=True, exist_ok=True)
        artifact = f"io.apicurio:apicurio-registry-app:{settings.apicurio_version}:tar.gz:all"
        _mvn(settings, ["dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={home}"], artifact)
        archive = next(home.glob("apicurio-registry-app-*-all.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(home, filter="data")
        archive.unlink()
        stamp.touch()
    return home


def java_major(java: str) -> int:
    proc = subprocess.run([java, "-version"], capture_output=True, text=True)
    m = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if not m:
        return 0
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def find_java(settings: LocalStackSettings, minimum: int, setting: str, configured: str | None) -> str:
    """A java executable of at least ``minimum``: the configured one, else any JDK found."""
    if configured:
        exe = shutil.which(configured)
        if not exe or java_major(exe) < minimum:
            raise ConfigError(f"{setting}={configured!r} is not a Java {minimum}+ executable")
        return exe
    candidates = [settings.java, *sorted(str(p) for p in Path("/usr/lib/jvm").glob("*/bin/java"))]
    for cand in candidates:
        exe = shutil.which(cand)
        if exe and java_major(exe) >= minimum:
            return exe
    raise ConfigError(
        f"no Java {minimum}+ found (looked at {', '.join(candidates)}); install one "
        f"or set {setting} to its java executable"
    )
