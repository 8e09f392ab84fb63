"""Named crash points for fault-injection tests.

``RFTLOOP_FAILPOINT=trainer.after_rename`` (comma-separated names) makes the
process die at that point the way ``kill -9`` does: ``os._exit`` runs no
handlers, flushes no buffers and sends nothing still queued. Tests use it to
kill a real process at an exact step instead of racing a signal against it.
"""

from __future__ import annotations

import os
import sys

ENV = "RFTLOOP_FAILPOINT"


def reached(name: str) -> None:
    if name in os.environ.get(ENV, "").split(","):
        sys.stderr.write(f"failpoint {name}: exiting like kill -9\n")
        sys.stderr.flush()
        os._exit(137)
