"""The demo's charts (PNG): quality and latency over time per version, and accuracy by generation."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def timeline(client: Any, db: str, model: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = client.query(
        f"""
        SELECT version, toStartOfInterval(occurred_at, INTERVAL 10 SECOND) AS t,
               quantileIf(0.95)(latency_ms, status = 'ok') AS p95, count() AS n
        FROM {db}.inference_completed FINAL WHERE model = {{model:String}} GROUP BY version, t ORDER BY t""",
        parameters={"model": model},
    )
    acc = client.query(
        f"""
        SELECT version, toStartOfInterval(occurred_at, INTERVAL 10 SECOND) AS t, avg(value) AS accuracy
        FROM {db}.feedback_submitted FINAL WHERE model = {{model:String}} AND evaluator = 'number_match'
        GROUP BY version, t ORDER BY t""",
        parameters={"model": model},
    )
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for version in sorted({r[0] for r in q.result_rows}):
        pts = [(r[1], r[2]) for r in q.result_rows if r[0] == version]
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=version)
        apts = [(r[1], r[2]) for r in acc.result_rows if r[0] == version]
        ax1.plot([p[0] for p in apts], [p[1] for p in apts], marker="o", label=version)
    ax1.set_ylabel("accuracy (number_match, 10 s)")
    ax2.set_ylabel("p95 latency ms (10 s)")
    ax1.legend(title="version")
    ax1.set_title("rftloop demo: quality and latency per model version")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def by_generation(generations: list[Any], path: Path) -> None:
    """Held-out accuracy of each generation's parent and candidate with the gain's interval, and
    the live accuracy of both during the canary; promoted generations marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [g for g in generations if g.figures]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if ran:
        xs = [g.n for g in ran]
        parent = [g.figures["incumbent_accuracy"] for g in ran]
        cand = [g.figures["candidate_accuracy"] for g in ran]
        low = [g.figures["incumbent_accuracy"] + g.figures.get("gain_lower", 0.0) for g in ran]
        high = [g.figures["incumbent_accuracy"] + g.figures.get("gain_upper", 0.0) for g in ran]
        ax.plot(xs, parent, "s--", color="grey", label="parent, held out")
        ax.errorbar(
            xs,
            cand,
            yerr=[
                [c - lo for c, lo in zip(cand, low, strict=True)],
                [hi - c for c, hi in zip(cand, high, strict=True)],
            ],
            fmt="o-",
            capsize=4,
            label="candidate, held out (the gain's interval where the sequential gate stopped)",
        )
        live = [(g.n, sum(g.live) / len(g.live)) for g in ran if g.live]
        if live:
            ax.plot([x for x, _ in live], [y for _, y in live], "^:", label="candidate, live")
        for g in ran:
            ax.annotate(
                "promoted" if g.promoted else (g.decision.split(":")[0] or "-")[:18],
                (g.n, g.figures["candidate_accuracy"]),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=8,
            )
    ax.set_xlabel("generation")
    ax.set_xticks(sorted({g.n for g in generations}))
    ax.set_ylabel("accuracy (final number right)")
    ax.set_title("rftloop demo: accuracy by generation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
