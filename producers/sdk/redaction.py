"""Redaction of personal data before a prompt or completion leaves the process as an event.

On by default. Built-in patterns: e-mail addresses, phone numbers, payment card
numbers (13-19 digits, optionally grouped); add your own regexes. Matches become
``[EMAIL]``, ``[PHONE]``, ``[CARD]`` or ``[REDACTED]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

BUILTIN: dict[str, str] = {
    "[EMAIL]": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    "[CARD]": r"\b(?:\d[ -]?){12,18}\d\b",
    "[PHONE]": r"(?<![\w])(?:\+?\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{3,4}[ .-]?\d{3,4}(?:[ .-]?\d{2,4})?(?![\w])",
}


class BadPattern(ValueError):
    """A redaction regex that does not compile."""


@dataclass
class Redactor:
    enabled: bool = True
    extra: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rules: list[tuple[re.Pattern[str], str]] = []
        for label, pattern in BUILTIN.items():
            self._rules.append((re.compile(pattern), label))
        for pattern in self.extra:
            try:
                self._rules.append((re.compile(pattern), "[REDACTED]"))
            except re.error as exc:
                raise BadPattern(f"redaction pattern {pattern!r}: {exc}") from exc

    def __call__(self, text: str) -> str:
        if not self.enabled or not text:
            return text
        for rx, label in self._rules:
            text = rx.sub(label, text)
        return text
