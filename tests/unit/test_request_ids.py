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
    head, version, key = body.split(".")
    assert ids.version_of(f"{head}.djI.{key}.{_tag}") is None  # another version, same tag
    assert ids.read(f"{head}.{version}.a2V5Mg.{_tag}") is None  # another key, same tag
    assert RequestIds(b"other").version_of(rid) is None
    assert ids.version_of("sdk-request-42") is None and ids.version_of("") is None


def test_the_id_names_the_key_that_made_the_request() -> None:
    ids = RequestIds(b"shared")
    assert ids.read(ids.new("cmpl", "v2", "k-1f2e")) == ("v2", "k-1f2e", 1)
    assert ids.read(ids.new("cmpl", "base")) == ("base", "", 1)


def test_the_id_of_an_n_gt_1_request_says_how_many_choices_it_has_and_cannot_be_stretched() -> None:
    ids = RequestIds(b"shared")
    rid = ids.new("chatcmpl", "v2", "k", choices=3)
    assert ids.read(rid) == ("v2", "k", 3)
    body, _, tag = rid.rpartition(".")
    assert ids.read(f"{body[:-1]}9.{tag}") is None  # a client claiming 9 choices breaks the tag
