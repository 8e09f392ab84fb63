"""Redaction on the labelled corpus (`tests/data/redaction_corpus.json`): recall and precision of
the gateway's and SDK's `Redactor` (producers/sdk/redaction.py), beside the three regexes rftloop
redacted with before it (e-mail, phone, card; kept here only as the peer), scored the same way in
the same run by `producers.sdk.redaction_score`."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from bench.harness import Context, Result
from producers.sdk.redaction import Detector, Redactor
from producers.sdk.redaction_score import score

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "redaction_corpus.json"
_OLD = (
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    r"\b(?:\d[ -]?){12,18}\d\b",
    r"(?<![\w])(?:\+?\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{3,4}[ .-]?\d{3,4}(?:[ .-]?\d{2,4})?(?![\w])",
)


def _old_regexes() -> Redactor:
    def finder(rx: re.Pattern[str]) -> Callable[[str], list[tuple[int, int]]]:
        return lambda text: [m.span() for m in rx.finditer(text)]

    detectors = [Detector(f"old{i}", "[OLD]", finder(re.compile(p))) for i, p in enumerate(_OLD)]
    return Redactor(disabled=("secret", "email", "iban", "card", "ssn", "ip", "phone"), custom=detectors)


def redaction(ctx: Context) -> list[Result]:
    ours, peer = score(Redactor(), CORPUS), score(_old_regexes(), CORPUS)
    how = (
        f"{ours.items} labelled personal items/secrets in {CORPUS.name} (plus clean look-alikes: sums, "
        "dates, decimals, ISBNs, order numbers, versions, hashes); recall = items gone after redaction / "
        "items, precision = redactions covering a labelled item / redactions; ours: Redactor() defaults; "
        "peer: the three regexes rftloop used before (e-mail, card, phone), same scoring, same run. "
        f"Ours: {ours.caught}/{ours.items} caught, {ours.on_target}/{ours.redactions} on target, "
        f"{len(ours.changed_clean)} clean texts changed; peer: {peer.caught}/{peer.items}, "
        f"{peer.on_target}/{peer.redactions}, {len(peer.changed_clean)} changed"
    )
    return [
        Result(
            name="privacy.redaction_recall",
            value=ours.recall,
            unit="share",
            peer="rftloop's former 3 regexes",
            peer_value=peer.recall,
            goal="≥ 0.95",
            goal_value=0.95,
            method=how,
        ),
        Result(
            name="privacy.redaction_precision",
            value=ours.precision,
            unit="share",
            peer="rftloop's former 3 regexes",
            peer_value=peer.precision,
            goal="≥ 0.95",
            goal_value=0.95,
            method=how,
        ),
    ]
