"""Failpoints end the process like kill -9 at an exact step; ``name@N`` picks the Nth time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = """
from infra import failpoints
print("armed", failpoints.armed("p"), failpoints.armed("q"), flush=True)
for i in range(1, 4):
    failpoints.reached("p")
    print("passed", i, failpoints.stall_s("s"), flush=True)
"""


def run(value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RFTLOOP_FAILPOINT"}
    if value is not None:
        env["RFTLOOP_FAILPOINT"] = value
    return subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_unset_never_fires() -> None:
    r = run(None)
    assert r.returncode == 0
    assert r.stdout.split("\n")[:4] == ["armed False False", "passed 1 0.0", "passed 2 0.0", "passed 3 0.0"]


def test_a_name_fires_the_first_time_and_exits_like_kill_9() -> None:
    r = run("q,p")
    assert r.returncode == 137
    assert r.stdout.splitlines() == ["armed True True"]
    assert "failpoint p: exiting like kill -9" in r.stderr


def test_name_at_n_fires_the_nth_time() -> None:
    r = run("p@3")
    assert r.returncode == 137
    assert r.stdout.splitlines() == ["armed True False", "passed 1 0.0", "passed 2 0.0"]


def test_name_tilde_s_stalls_the_first_time_only_and_never_kills() -> None:
    r = run("s~2.5")
    assert r.returncode == 0
    assert r.stdout.splitlines() == ["armed False False", "passed 1 2.5", "passed 2 0.0", "passed 3 0.0"]
