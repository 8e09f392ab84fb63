"""Request ids carry the version that served them (producers/gateway/request_ids.py)."""

from __future__ import annotations

from producers.gateway.request_ids import RequestIds


def test_any_replica_with_the_key_reads_the_version_back() -> None:
    a, b = RequestIds(b"shared"), RequestIds(b"shared")
    rid = a.new("chatcmpl", "v3b7b98ff83")
    assert rid.startswith("chatcmpl-") and b.version_of(rid) == "v3b7b98ff83"
    assert b.version_of(a.new("chatcmpl", "base")) == "base"


def test_a_made_up_or_foreign_id_names_no_version() -> None:
    ids = RequestIds(b"shared")
    rid = ids.new("chatcmpl", "v1")
    body, _, _tag = rid.rpartition(".")
    assert ids.version_of(body + ".AAAAAAAAAAAA") is None  # forged tag
    prefix, _, _ = body.rpartition(".")
    assert ids.version_of(f"{prefix}.djI.{_tag}") is None  # another version, same tag
    assert RequestIds(b"other").version_of(rid) is None
    assert ids.version_of("sdk-request-42") is None and ids.version_of("") is None
