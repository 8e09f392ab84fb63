"""A background process with a pid file, a log file, a readiness probe and a clean stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class ServiceError(RuntimeError):
    """A local service could not be started, reached or stopped; the message says why."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


_PORTS = (20000, 32767)  # below Linux's ephemeral range (32768-60999): outbound connections never take them
_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now, for a service about to bind it.

    Not the OS's ``bind(0)`` pick: that comes from the ephemeral range, where any outbound
    connection (a Kafka client reconnecting, say) can take the port before the service binds it;
    a 3-broker start failed that way under load ("Address already in use"). A port is also never
    handed out twice by one process, so several picked before any bind stay distinct."""
    import random

    for _ in range(200):
        port = random.randint(*_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # the whole range busy: let the OS pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class ManagedProcess:
    """One service process of the local stack.

    ``prepare`` does the one-time work (fetch jars, format storage, write config)
    and returns the command line; it runs only on start. ``probe`` returns None
    when the service answers, or the reason it does not.
    """

    name: str
    prepare: Callable[[], list[str]]
    state_dir: Path
    port: int
    port_setting: str
    probe: Callable[[], str | None]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    start_timeout_s: float = 120.0
    notes: Callable[[], str | None] = lambda: None  # what status adds while it runs (a warning)

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def status(self) -> tuple[bool, str]:
        """(healthy, reason) as `rftloop status` shows it."""
        pid = self.pid()
        if pid is None:
            if port_in_use(self.port):
                return False, f"not started by rftloop, but port {self.port} is taken by another process"
            return False, "not running"
        reason = self.probe()
        if reason:
            return False, f"pid {pid} running but not answering on port {self.port}: {reason}"
        note = self.notes()
        return True, f"pid {pid}, port {self.port}" + (f"; {note}" if note else "")

    def start(self, on_progress: Callable[[str], None] = lambda _m: None, wait: bool = True) -> str:
        """Start unless already running; wait until the probe answers (unless ``wait`` is False:
        nodes of a cluster become ready only together). Returns what happened."""
        if self.pid() is not None:
            healthy, _reason = self.status()
            if healthy:
                return "already running"
            if wait:
                self.wait_ready(on_progress)
            return "was starting; now ready" if wait else "starting"
        if port_in_use(self.port):
            raise ServiceError(
                f"{self.name}: port {self.port} is already in use by another process; "
                f"stop it or choose another port with {self.port_setting}"
            )
        argv = self.prepare()
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"\n=== start {time.strftime('%F %T')}: {' '.join(argv)}\n".encode())
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        if wait:
            self.wait_ready(on_progress)
        return f"started (pid {proc.pid})"

    def wait_ready(self, on_progress: Callable[[str], None]) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        last_note = time.monotonic()
        reason: str | None = "not probed"
        while time.monotonic() < deadline:
            pid = self.pid()
            if pid is None:
                raise ServiceError(
                    f"{self.name} exited during start-up; see {self.log_file}:\n" + self.log_tail()
                )
            reason = self.probe()
            if reason is None:
                return
            if time.monotonic() - last_note > 10:
                on_progress(f"waiting for {self.name} on port {self.port} ({reason})")
                last_note = time.monotonic()
            time.sleep(0.25)
        raise ServiceError(
            f"{self.name} did not become ready in {self.start_timeout_s:.0f}s ({reason}); "
            f"see {self.log_file}:\n" + self.log_tail()
        )

    def stop(self, timeout_s: float = 30.0) -> str:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return "not running"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)
        how = "stopped"
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            how = f"killed after {timeout_s:.0f}s"
            while pid_alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return how

    def kill(self) -> None:
        """kill -9 the whole process group (fault-injection tests)."""
        pid = self.pid()
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
