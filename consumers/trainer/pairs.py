"""Preference pairs for DPO: two responses to one prompt, and which one the user preferred.

A FeedbackSubmitted of kind `preference` on request A with `other_request_id` B says A's response
was preferred over B's (value > 0) or not (value < 0). Prompts come from InferenceRequested, the
responses from InferenceCompleted — all from ClickHouse (the sink's durable copy of the topics).
A pair is used only when both requests asked the same thing, both succeeded, and neither opted out
of training, and neither requester nor rater has been erased (``infra/erasure.py``); the latest
judgement of a pair wins. A preference on choice k of an n > 1 response (``choice`` on the
feedback) prefers that choice's text over the other request's response.

Within one response: when the choices of an n > 1 response got thumbs of both signs (choice 0 up,
choice 1 down), each up-voted choice is preferred over each down-voted one — the same prompt by
construction, the cleanest pair there is. The latest thumb on a choice wins; the pair's lineage
is the up vote's event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from infra.erasure import not_erased

_KEPT = not_erased("{db}")

PREFERENCES = (
    """
SELECT request_id, other_request_id, choice, argMax(value, occurred_at) AS preferred,
       toString(argMax(event_id, occurred_at)) AS event_id,
       argMax(_topic, occurred_at) AS topic, argMax(_partition, occurred_at) AS partition,
       argMax(_offset, occurred_at) AS offset
FROM {db}.feedback_submitted FINAL
WHERE kind = 'preference' AND model = {model:String} AND other_request_id IS NOT NULL AND """
    + _KEPT
    + """
GROUP BY request_id, other_request_id, choice
HAVING preferred IS NOT NULL AND preferred != 0
ORDER BY request_id, other_request_id, choice
"""
)
CHOICE_VOTES = (
    """
SELECT request_id, choice, argMax(value, occurred_at) AS vote,
       toString(argMax(event_id, occurred_at)) AS event_id,
       argMax(_topic, occurred_at) AS topic, argMax(_partition, occurred_at) AS partition,
       argMax(_offset, occurred_at) AS offset
FROM {db}.feedback_submitted FINAL
WHERE kind = 'thumbs' AND model = {model:String} AND other_request_id IS NULL AND """
    + _KEPT
    + """
GROUP BY request_id, choice
HAVING vote IS NOT NULL AND vote != 0
ORDER BY request_id, choice
"""
)
REQUESTS = (
    """
SELECT request_id, any(prompt) AS prompt, any(messages) AS messages, max(training_opt_out) AS opt_out
FROM {db}.inference_requested FINAL WHERE request_id IN {ids:Array(String)} AND """
    + _KEPT
    + """
GROUP BY request_id
"""
)
COMPLETIONS = """
SELECT request_id, argMax(completion, occurred_at) AS completion, argMax(choices, occurred_at) AS choices
FROM {db}.inference_completed FINAL WHERE request_id IN {ids:Array(String)} AND status = 'ok'
GROUP BY request_id
"""


@dataclass(frozen=True)
class Pair:
    request_id: str  # the request the preference was given on (the hold-out split hashes it)
    event_id: str  # the FeedbackSubmitted that decided the pair (lineage, version id)
    messages: list[dict[str, str]]
    chosen: str
    rejected: str
    topic: str
    partition: int
    offset: int


def load_pairs(client: Any, db: str, model: str) -> tuple[list[Pair], int]:
    """The usable pairs, and how many preferences were skipped (different prompts, failures, opt-outs)."""
    params = {"model": model}
    prefs = list(client.query(PREFERENCES.replace("{db}", db), parameters=params).named_results())
    votes: dict[str, list[dict[str, Any]]] = {}
    for v in client.query(CHOICE_VOTES.replace("{db}", db), parameters=params).named_results():
        votes.setdefault(v["request_id"], []).append(v)
    split = {rid: vs for rid, vs in votes.items() if {v["vote"] > 0 for v in vs} == {True, False}}
    if not prefs and not split:
        return [], 0
    ids = sorted({p["request_id"] for p in prefs} | {p["other_request_id"] for p in prefs} | set(split))
    requests = {
        r["request_id"]: r
        for r in client.query(REQUESTS.replace("{db}", db), parameters={"ids": ids}).named_results()
    }
    completions = {
        r["request_id"]: r
        for r in client.query(COMPLETIONS.replace("{db}", db), parameters={"ids": ids}).named_results()
    }
    pairs, skipped = [], 0
    for p in prefs:
        a, b = p["request_id"], p["other_request_id"]
        ra, rb = requests.get(a), requests.get(b)
        text_a, text_b = _text(completions.get(a), int(p["choice"])), _text(completions.get(b), 0)
        if ra is None or rb is None or text_a is None or text_b is None:
            skipped += 1
            continue
        # the messages compared as JSON values: rows decoded by ClickHouse and by the sink space them apart
        same = (ra["prompt"], json.loads(ra["messages"] or "[]")) == (
            rb["prompt"],
            json.loads(rb["messages"] or "[]"),
        )
        if ra["opt_out"] or rb["opt_out"] or not same:
            skipped += 1
            continue
        better, worse = (text_a, text_b) if p["preferred"] > 0 else (text_b, text_a)
        pairs.append(
            Pair(
                a,
                p["event_id"],
                _messages(ra),
                better,
                worse,
                p["topic"],
                int(p["partition"]),
                int(p["offset"]),
            )
        )
    for rid, vs in split.items():
        request, completion = requests.get(rid), completions.get(rid)
        if request is None or completion is None or request["opt_out"]:
            skipped += 1
            continue
        texts = {int(v["choice"]): _text(completion, int(v["choice"])) for v in vs}
        downs = [texts[int(v["choice"])] for v in vs if v["vote"] < 0]
        for up in (v for v in vs if v["vote"] > 0):
            chosen = texts[int(up["choice"])]
            for rejected in downs:
                if chosen is None or rejected is None or chosen == rejected:
                    skipped += 1
                    continue
                pairs.append(
                    Pair(
                        rid,
                        up["event_id"],
                        _messages(request),
                        chosen,
                        rejected,
                        up["topic"],
                        int(up["partition"]),
                        int(up["offset"]),
                    )
                )
    return pairs, skipped


def _messages(request: dict[str, Any]) -> list[dict[str, str]]:
    return (json.loads(request["messages"]) if request["messages"] else None) or [
        {"role": "user", "content": request["prompt"]}
    ]


def _text(row: dict[str, Any] | None, choice: int) -> str | None:
    """The text of one choice of a stored response; None when there is no such response or choice."""
    if row is None:
        return None
    if choice == 0:
        return str(row["completion"])
    choices = json.loads(row["choices"] or "[]")
    return str(choices[choice]["completion"]) if choice < len(choices) else None
