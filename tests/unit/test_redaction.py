"""Redaction (producers/sdk/redaction.py) on the labelled corpus, its switches, and the task data
it must leave alone: the arithmetic evaluator scores a redacted right answer as right."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra import rewards
from producers.sdk.redaction import BadPattern, Detector, Redactor, UnknownDetector
from producers.sdk.redaction_score import score

pytestmark = pytest.mark.unit
CORPUS = Path(__file__).resolve().parents[1] / "data" / "redaction_corpus.json"


def test_corpus_recall_and_precision_meet_the_goal() -> None:
    s = score(Redactor(), CORPUS)
    assert s.items >= 30 and s.redactions >= s.items
    assert s.recall >= 0.95, s.missed
    assert s.precision >= 0.95 and not s.changed_clean, s.changed_clean


def test_each_kind_gets_its_label() -> None:
    r = Redactor()
    text = (
        "mail jane@example.com, call (415) 555-2671, card 4111 1111 1111 1111, IBAN GB82WEST12345698765432, "
        "ssn 536-90-4321, host 203.0.113.7, key AKIAIOSFODNN7EXAMPLE"
    )
    assert (
        r(text) == "mail [EMAIL], call [PHONE], card [CARD], IBAN [IBAN], ssn [SSN], host [IP], key [SECRET]"
    )


def test_task_content_is_left_alone_and_scores_as_before() -> None:
    r = Redactor()
    for answer, reference in (("The answer is 777777", "777777"), ("1234567890123", "1234567890123")):
        assert r(answer) == answer
        item = rewards.EvalInput(
            prompt="What is 123456 plus 654321?", completion=r(answer), reference=reference
        )
        assert rewards.number_match(item) == 1.0
    assert r("What is 123456 plus 654321? Answer: 777777") == "What is 123456 plus 654321? Answer: 777777"


def test_detectors_switch_off_and_custom_ones_add() -> None:
    assert Redactor(disabled=["phone"])("call (415) 555-2671") == "call (415) 555-2671"
    assert Redactor(enabled=False)("jane@example.com") == "jane@example.com"
    ticket = Detector(
        "ticket", "[TICKET]", lambda t: [(t.index("T-"), t.index("T-") + 6)] if "T-" in t else []
    )
    assert Redactor(custom=[ticket])("see T-1234 now") == "see [TICKET] now"
    assert Redactor(extra=[r"\bproject-\w+"])("in project-orion") == "in [REDACTED]"
    with pytest.raises(UnknownDetector, match="'phones'"):
        Redactor(disabled=["phones"])
    with pytest.raises(BadPattern, match=r"redaction pattern .\(unclosed"):
        Redactor(extra=["(unclosed"])


def test_overlapping_finds_become_one_redaction() -> None:
    # an e-mail whose local part looks like a phone number: one [EMAIL], not "[PHONE]@..."
    assert Redactor()("write 4155552671@example.com") == "write [EMAIL]"


def _tickets(text: str) -> list[tuple[int, int]]:
    return [(text.index("T-"), text.index("T-") + 6)] if "T-" in text else []


def test_a_redactor_pickles_as_its_settings_for_the_sender_process() -> None:
    import pickle

    original = Redactor(
        disabled=["phone"], extra=[r"\bproject-\w+"], custom=[Detector("ticket", "[TICKET]", _tickets)]
    )
    copy = pickle.loads(pickle.dumps(original))
    text = "jane@example.com on T-1234 in project-orion, call (415) 555-2671"
    assert copy(text) == original(text) == "[EMAIL] on [TICKET] in [REDACTED], call (415) 555-2671"
    # a custom detector that cannot travel is refused when the process logger starts, by name
    from producers.sdk import InferenceLogger, SenderProcessFailed

    with pytest.raises(SenderProcessFailed, match="module-level functions, or use process=False"):
        InferenceLogger(
            producer="p",
            redactor=Redactor(custom=[Detector("t", "[T]", lambda t: [])]),
            process=True,
        )


def test_a_sender_process_that_cannot_start_is_a_named_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ``sys.executable`` is not a Python (an embedding server's binary), the child exits at
    once: the logger says so and names the way out, instead of waiting for it."""
    import sys

    from producers.sdk import InferenceLogger, SenderProcessFailed

    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(
        SenderProcessFailed, match=r"/bin/false -m .* exited at start \(code 1;.*process=False"
    ):
        InferenceLogger(producer="p")


def test_the_phone_matcher_reads_windows_and_finds_what_it_finds_in_the_whole_text() -> None:
    """The phone detector runs libphonenumber's matcher only around runs of 7+ digits. For the
    default region it finds exactly what the matcher finds over the whole text, on generated texts
    that put numbers next to look-alikes, separators and text edges."""
    import random

    import phonenumbers

    from producers.sdk.redaction import _phones

    def whole(text: str) -> list[tuple[int, int]]:
        matcher = phonenumbers.PhoneNumberMatcher(text, "US", leniency=phonenumbers.Leniency.VALID)
        return [(m.start, m.end) for m in matcher]

    phones = [
        "(415) 555-2671",
        "+1 415 555 2671",
        "415-555-2671",
        "+44 20 7946 0958",
        "1-800-555-0199",
        "415.555.2671",
        "tel:+14155552671",
        "+1(415)555-2671",
        "4155552671",
        "+1 415-555-2671x99",
    ]
    noise = [
        "revenue",
        "12",
        "2023",
        "4.2",
        "#123456789",
        "id=98765432",
        "2023-2024",
        "3.14159265",
        "555",
        "ISBN 978-3-16-148410-0",
        "(",
        ")",
        "-",
        "+",
        "/",
        "a1b2c3",
        "v1.2.3",
        "10:30",
        "ext",
        "(0)",
        "x",
    ]
    find = _phones(("US",))
    rng = random.Random(20261207)
    found = 0
    for _ in range(300):
        parts = [
            rng.choice(phones) if rng.random() < 0.15 else rng.choice(noise)
            for _ in range(rng.randint(1, 50))
        ]
        text = rng.choice([" ", "", ", ", "\n", "-", "/"]).join(parts)
        expected = whole(text)
        assert sorted(find(text)) == sorted(expected), text
        found += len(expected)
    assert found > 300  # the texts did hold numbers to find
