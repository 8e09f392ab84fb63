"""Request cases generated from an OpenAPI document: a valid body per operation, then hostile variants.

Small and dependency-free on purpose: for every JSON request body in the spec it
builds a schema-valid instance, then replaces each field (top level and one
level into arrays of objects) with values of the wrong type, out of range,
huge, empty or absent, adds unknown fields, sends whole bodies that are not
objects, not JSON or not UTF-8, and finally random combinations of those. A
server passes when no case gets a 5xx and every 4xx carries an error message.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

HOSTILE: list[Any] = [
    None,
    "",
    "x" * 100_000,
    -1,
    0,
    10**30,
    -(10**30),
    1.5,
    1e308,
    True,
    [],
    [[[[[[[[[[[]]]]]]]]]]],
    {},
    {"$ref": "#/x"},
    "\u0000\u202e\U0001f600",
    "../../etc/passwd",
]
RAW_BODIES: list[bytes] = [
    b"",
    b"null",
    b"[]",
    b'"a string"',
    b"123",
    b"{",
    b'{"a": NaN}',
    b"\xff\xfe\xfa",
    b"{" * 10_000 + b"}" * 10_000,
    json.dumps({"k": "v" * 10}).encode() * 1000,
]


@dataclass
class Case:
    method: str
    path: str
    body: bytes | None
    content_type: str
    label: str


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = spec["components"]["schemas"][name]
    return schema


def example(schema: dict[str, Any], spec: dict[str, Any]) -> Any:
    """One instance that satisfies `schema` (the common JSON-schema keywords pydantic emits)."""
    schema = _resolve(schema, spec)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        return example(options[0], spec) if options else None
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: example(props[name], spec) for name in schema.get("required", [])}
    if kind == "array":
        return [example(schema.get("items", {}), spec) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind == "string":
        pattern = schema.get("pattern", "")
        alternatives = re.match(r"^\^\(([^)]*)\)\$$", pattern)
        if alternatives:
            return (
                alternatives.group(1).split("|")[1] if "|" in alternatives.group(1) else alternatives.group(1)
            )
        return "hello"[: schema.get("maxLength", 5)].ljust(schema.get("minLength", 0), "x")
    if kind == "integer":
        return max(schema.get("minimum", 1), 1)
    if kind == "number":
        return schema.get("minimum", 0.5)
    if kind == "boolean":
        return False
    return "x"


def _field_paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*prefix, k)
            if isinstance(v, list) and v and isinstance(v[0], dict):
                yield from _field_paths(v[0], (*prefix, k, 0))


def _set(body: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> Any:
    out = copy.deepcopy(body)
    target = out
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


def _encode(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


def cases(
    spec: dict[str, Any], fixed: dict[str, dict[str, Any]] | None = None, seed: int = 0, combos: int = 60
) -> list[Case]:
    """Every case for every JSON-body operation; `fixed` pins fields of the valid body per path."""
    rng = random.Random(seed)
    out: list[Case] = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if content is None or "{" in path:
                continue
            schema = _resolve(content["schema"], spec)
            valid = example(schema, spec)
            props = schema.get("properties", {})
            for name, prop in props.items():  # optional fields too, with their own valid value
                valid.setdefault(name, example(prop, spec))
            valid.update((fixed or {}).get(path, {}))
            m = method.upper()
            out.append(Case(m, path, _encode(valid), "application/json", "valid"))
            paths = list(_field_paths(valid))
            for fp in paths:
                out.append(
                    Case(
                        m, path, _encode(_set(valid, fp, None, delete=True)), "application/json", f"drop {fp}"
                    )
                )
                for value in HOSTILE:
                    out.append(
                        Case(
                            m,
                            path,
                            _encode(_set(valid, fp, value)),
                            "application/json",
                            f"{fp}={value!r:.30}",
                        )
                    )
            out.append(
                Case(m, path, _encode({**valid, "unknown_field": {"a": [1]}}), "application/json", "extra")
            )
            for raw in RAW_BODIES:
                out.append(Case(m, path, raw, "application/json", f"raw {raw[:20]!r}"))
            out.append(Case(m, path, _encode(valid), "text/plain", "text/plain"))
            for i in range(combos):
                body = valid
                for fp in rng.sample(paths, k=min(len(paths), rng.randint(2, 4))):
                    with contextlib.suppress(KeyError, IndexError, TypeError):  # parent replaced before
                        body = _set(body, fp, rng.choice(HOSTILE))
                out.append(Case(m, path, _encode(body), "application/json", f"combo {i}"))
    return out
