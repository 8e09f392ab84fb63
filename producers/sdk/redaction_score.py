"""Precision and recall of a ``Redactor`` on a labelled corpus (``tests/data/redaction_corpus.json``).

Recall: the share of labelled items (a personal item or secret in a text) that no longer appear
after redaction. Precision: the share of redactions that cover part of a labelled item; every
redaction in a clean text counts against it. ``changed_clean`` lists the clean texts that did
not come back unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from producers.sdk.redaction import Redactor


@dataclass
class Score:
    items: int = 0
    caught: int = 0
    redactions: int = 0
    on_target: int = 0
    missed: list[str] = field(default_factory=list)
    changed_clean: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.caught / self.items if self.items else 1.0

    @property
    def precision(self) -> float:
        return self.on_target / self.redactions if self.redactions else 1.0


def score(redactor: Redactor, corpus: Path) -> Score:
    out = Score()
    for item in json.loads(corpus.read_text())["items"]:
        text, pii = item["text"], item["pii"]
        spans = [(text.index(p), text.index(p) + len(p)) for p in pii]
        redacted = redactor(text)
        for p in pii:
            out.items += 1
            if p in redacted:
                out.missed.append(p)
            else:
                out.caught += 1
        for start, end, _ in redactor.findings(text):
            out.redactions += 1
            if any(start < e and s < end for s, e in spans):
                out.on_target += 1
        if not pii and redacted != text:
            out.changed_clean.append(f"{text!r} -> {redacted!r}")
    return out
