"""Named crash points for fault-injection tests.

``RFTLOOP_FAILPOINT=trainer.after_rename`` (comma-separated names; ``name@N``: the Nth time
it is reached) makes the process die at that point the way ``kill -9`` does: ``os._exit`` runs no
handlers, flushes no buffers and sends nothing still queued. Tests use it to
kill a real process at an exact step instead of racing a signal against it.

``name~S`` is a stall instead: the first time the code asks ``stall_s(name)`` it gets S seconds to
wait (a slow metadata fetch, a broker that answers late), so a test can hold one step while another
one races it.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

ENV = "RFTLOOP_FAILPOINT"
_hits: Counter[str] = Counter()


def _items() -> list[str]:
    return [item.strip() for item in os.environ.get(ENV, "").split(",") if item.strip()]


def _armed() -> dict[str, int]:
    out = {}
    for item in _items():
        if "~" not in item:
            name, _, nth = item.partition("@")
            out[name] = int(nth or 1)
    return out


def stall_s(name: str) -> float:
    """Seconds to stall here: S the first time for ``name~S``, else 0."""
    for item in _items():
        stalled, sep, seconds = item.partition("~")
        if sep and stalled == name:
            _hits[item] += 1
            return float(seconds) if _hits[item] == 1 else 0.0
    return 0.0


def armed(name: str) -> bool:
    """Whether ``name`` is set to fire at some point (to prepare the state it should die in)."""
    return name in _armed()


def reached(name: str) -> None:
    nth = _armed().get(name)
    if nth is None:
        return
    _hits[name] += 1
    if _hits[name] == nth:
        sys.stderr.write(f"failpoint {name}: exiting like kill -9\n")
        sys.stderr.flush()
        os._exit(137)
