"""Render the figures the reliability tests recorded (JSON lines) into RELIABILITY.md's table.

`make reliability` runs the marked scenarios with RFTLOOP_RELIABILITY_OUT set, then
this module replaces the text between the two `figures` markers in RELIABILITY.md.
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"


def render(lines: list[dict[str, object]]) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"Rendered {stamp} on {platform.node() or 'this machine'} (Python {platform.python_version()}) "
        "from the figures the reliability tests recorded in one run (`make reliability`, or any "
        "pytest run with RFTLOOP_RELIABILITY_OUT set). Scenarios that did not pass in that run "
        "have no row.",
        "",
        "| scenario | figures | test |",
        "|---|---|---|",
    ]
    for line in lines:
        figures = {k: v for k, v in line.items() if k not in ("scenario", "test")}
        shown = ", ".join(f"{k} = {json.dumps(v) if isinstance(v, dict) else v}" for k, v in figures.items())
        test = str(line["test"]).split("::")[-1]
        out.append(f"| {line['scenario']} | {shown} | `{test}` |")
    return "\n".join(out)


def main(source: str, target: str) -> int:
    lines = [json.loads(x) for x in Path(source).read_text().splitlines() if x.strip()]
    doc = Path(target).read_text()
    if BEGIN not in doc or END not in doc:
        print(f"{target} has no {BEGIN} ... {END} section", file=sys.stderr)
        return 2
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    Path(target).write_text(f"{head}{BEGIN}\n{render(lines)}\n{END}{tail}")
    print(f"{len(lines)} scenario(s) written to {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
