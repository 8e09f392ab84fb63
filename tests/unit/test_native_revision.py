"""Native blocks rewritten for a client_protocol_version (``infra.clickhouse.native_revision``),
on blocks built by hand as chdb writes them at version 0."""

from __future__ import annotations

import logging

import pytest

from infra.clickhouse import native_revision as nr
from infra.clickhouse.embedded_engine import QueryFailed


def _string(text: str) -> bytes:
    raw = text.encode()
    return bytes([len(raw)]) + raw


def _block(rows: int, *columns: tuple[str, str, bytes]) -> bytes:
    out = bytes([len(columns), rows])
    for name, type_name, data in columns:
        out += _string(name) + _string(type_name) + data
    return out


STRINGS = ("s", "String", _string("a") + _string("bc"))
WHEN = ("t", "DateTime", (1).to_bytes(4, "little") + (2).to_bytes(4, "little"))


def test_a_version_is_a_number_and_one_native_can_be_written_for() -> None:
    assert nr.revision(None) == 0 and nr.revision("") == 0 and nr.revision("54405") == 54405
    with pytest.raises(nr.UnsupportedRevision, match="must be a number"):
        nr.revision("new")
    with pytest.raises(nr.UnsupportedRevision, match="client_protocol_version 54454"):
        nr.revision("54454")
    assert nr.revision("54460", native=False) == 0  # other formats do not change with it


def test_each_block_gets_block_info_and_a_zoned_datetime_its_zone_back() -> None:
    block = _block(2, STRINGS, WHEN, ("n", "UInt8", b"\x01\x02"))
    asked: list[int] = []

    def zoned() -> dict[int, str]:
        asked.append(1)
        return {1: "DateTime('Asia/Tokyo')"}

    out = list(nr.blocks(iter([block, block]), 54405, zoned))
    want = nr.BLOCK_INFO + _block(
        2, STRINGS, ("t", "DateTime('Asia/Tokyo')", WHEN[2]), ("n", "UInt8", b"\x01\x02")
    )
    assert out == [want, want] and asked == [1]  # DESCRIBE once for the whole result
    assert list(nr.blocks(iter([block]), 54336, zoned)) == [nr.BLOCK_INFO + block]  # no zones below 54337
    assert list(nr.blocks(iter([block]), 0, zoned)) == [block]


def test_a_block_without_datetime_never_asks_for_zones() -> None:
    block = _block(2, STRINGS)
    assert list(nr.blocks(iter([block]), 54405, lambda: pytest.fail("asked"))) == [nr.BLOCK_INFO + block]


def test_a_column_that_cannot_be_walked_leaves_later_zones_out_and_says_so(caplog) -> None:
    opaque = ("u", "AggregateFunction(uniq, UInt64)", b"\x00\x00")
    block = _block(2, opaque, WHEN)
    with caplog.at_level(logging.WARNING):
        out = list(nr.blocks(iter([block]), 54405, lambda: {1: "DateTime('UTC')"}))
    assert out == [nr.BLOCK_INFO + block]
    assert "cannot be walked" in caplog.text


def test_low_cardinality_below_54405_is_refused_naming_the_version() -> None:
    lc = ("l", "LowCardinality(String)", b"")  # no rows: no data
    with pytest.raises(QueryFailed, match="client_protocol_version 54337"):
        list(nr.blocks(iter([_block(0, lc)]), 54337))
    assert list(nr.blocks(iter([_block(0, lc)]), 54405)) == [nr.BLOCK_INFO + _block(0, lc)]


def test_split_finds_each_block_of_a_whole_result() -> None:
    first, second = (
        _block(2, STRINGS, WHEN),
        _block(
            1, ("a", "Array(Nullable(String))", b"\x02" + bytes(7) + b"\x00\x01" + _string("x") + _string(""))
        ),
    )
    assert nr.split(first + second) == [first, second]
    with pytest.raises(ValueError, match="Variant"):
        nr.split(_block(1, ("v", "Variant(String, UInt8)", b"\x00")) + first)


def test_zoned_columns_reads_describe_output() -> None:
    tsv = b"a\tString\t\t\t\t\t\nt\tDateTime(\\'Asia/Shanghai\\')\t\t\t\t\t\nd\tDateTime64(3, \\'UTC\\')\t\t\t\t\t\n"
    assert nr.zoned_columns(tsv) == {1: "DateTime('Asia/Shanghai')"}
