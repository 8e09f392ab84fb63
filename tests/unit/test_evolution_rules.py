"""BACKWARD rules that `rftloop schemas check` applies before the registry is asked."""

from __future__ import annotations

import copy
import json

from infra.registry import backward_problems
from schemas.topics import COMPLETED

V1 = json.loads(COMPLETED.schema_path.read_text())


def _with(fields_edit) -> dict:  # type: ignore[no-untyped-def]
    s = copy.deepcopy(V1)
    fields_edit(s["fields"])
    return s


def test_new_field_with_default_is_fine() -> None:
    v2 = _with(lambda f: f.append({"name": "region", "type": "string", "default": "eu", "doc": "d"}))
    assert backward_problems(V1, v2) == []


def test_new_field_without_default_names_the_field() -> None:
    v2 = _with(lambda f: f.append({"name": "region", "type": "string", "doc": "d"}))
    (problem,) = backward_problems(V1, v2)
    assert "'region'" in problem and "no default" in problem


def test_rename_is_reported_as_a_rename() -> None:
    def rename(fields):  # type: ignore[no-untyped-def]
        for f in fields:
            if f["name"] == "latency_ms":
                f["name"] = "latency_millis"

    (problem,) = backward_problems(V1, _with(rename))
    assert "'latency_millis'" in problem and "renamed from latency_ms" in problem


def test_retype_names_the_field_and_promotion_is_allowed() -> None:
    def retype(fields):  # type: ignore[no-untyped-def]
        for f in fields:
            if f["name"] == "latency_ms":
                f["type"] = "string"

    (problem,) = backward_problems(V1, _with(retype))
    assert "'latency_ms'" in problem and "changed type" in problem

    def promote(fields):  # type: ignore[no-untyped-def]
        for f in fields:
            if f["name"] == "prompt_tokens":
                f["type"] = "long"

    assert backward_problems(V1, _with(promote)) == []


def test_removing_a_field_is_backward_compatible() -> None:
    assert backward_problems(V1, _with(lambda f: f.pop())) == []
