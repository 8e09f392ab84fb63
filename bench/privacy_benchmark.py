"""Redaction on the labelled corpus (`tests/data/redaction_corpus.json`): recall and precision of
the gateway's and SDK's `Redactor` (producers/sdk/redaction.py), beside the three regexes rftloop
redacted with before it (e-mail, phone, card; kept here only as the peer), scored the same way in
the same run by `producers.sdk.redaction_score`; and what redacting a long prompt costs, beside the
phone matcher's former pass over the whole text."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import Context, Result
from producers.sdk.redaction import _PHONE_LIKE, BUILTIN_NAMES, Detector, Redactor
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
    return Redactor(disabled=BUILTIN_NAMES, custom=detectors)


def _whole_text_phones(text: str) -> list[tuple[int, int]]:
    """The phone detector before it read windows (the peer): a run of 7+ digits anywhere sent the
    whole text through libphonenumber's matcher."""
    import phonenumbers

    if not _PHONE_LIKE.search(text):
        return []
    matcher = phonenumbers.PhoneNumberMatcher(text, "US", leniency=phonenumbers.Leniency.VALID)
    return [(m.start, m.end) for m in matcher]


def _long_prompt(size: int = 10_000) -> str:
    """A RAG-sized prompt: report prose with figures, years and section numbers, and one phone
    number, one e-mail address and one IP address to find (a fixed seed: the same text each run)."""
    rng = random.Random(7)
    prose = "the model answered that revenue grew 12 percent in 2023 while costs fell ; see section 4.2 of"
    words = [*prose.split(" "), "the", "report", "for", "details", "about", "quarterly", "numbers"]
    out: list[str] = []
    length = 0
    while length < size:
        out.append(rng.choice(words))
        length += len(out[-1]) + 1
    third = len(out) // 3
    out[third : third + 1] = ["call", "(415)", "555-2671"]
    out[2 * third : 2 * third + 1] = ["mail", "jane.doe@example.com", "from", "10.20.30.40"]
    return " ".join(out)


def _best_ms(redact: Redactor, text: str, rounds: int = 7, number: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(number):
            redact(text)
        best = min(best, (time.perf_counter() - t0) / number)
    return best * 1e3


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
    text = _long_prompt()
    windowed = Redactor()
    whole = Redactor(disabled=("phone",), custom=[Detector("phone", "[PHONE]", _whole_text_phones)])
    if windowed(text) != whole(text):
        raise RuntimeError("the two phone paths redact the long prompt differently")
    for warm in (windowed, whole):
        _best_ms(warm, text, rounds=1)
    ours_ms, peer_ms = [], []
    for _ in range(3):  # interleaved: the same machine state for both
        ours_ms.append(_best_ms(windowed, text))
        peer_ms.append(_best_ms(whole, text))
    by_detector = {
        d.name: _best_ms(Redactor(disabled=[n for n in BUILTIN_NAMES if n != d.name]), text)
        for d in windowed.detectors
    }
    return [
        Result(
            name="privacy.redaction_ms_10kb",
            value=min(ours_ms),
            unit="ms per prompt",
            peer="the same detectors, the phone matcher over the whole text (the former path)",
            peer_value=min(peer_ms),
            goal="report (the sender's work for a RAG-sized prompt: calls/s per core ≈ 1,000 / this)",
            higher_is_better=False,
            method=(
                f"Redactor() on one {len(text):,}-character prompt of report prose with figures, years and "
                "section numbers (fixed seed) and one phone number, e-mail and IP address; the best of 7 "
                "rounds of 5 calls, three times, interleaved with the peer (the same Redactor with the phone "
                "detector replaced by the former one, whose 7+ digit gate sent the whole text through "
                "libphonenumber's matcher); both redact the prompt to the same text (checked). Each "
                "detector alone, ours: "
                + ", ".join(f"{name} {ms:.2f} ms" for name, ms in by_detector.items())
            ),
        ),
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
