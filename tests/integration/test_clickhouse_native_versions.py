"""Native results for a caller's ``client_protocol_version``, as clickhouse-server writes them
(``infra.clickhouse.native_revision``), read by clickhouse-connect at the version it negotiates."""

from __future__ import annotations

import tempfile
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from infra.clickhouse import native_revision
from infra.clickhouse.client import connect

SHANGHAI = "SELECT toDateTime(1676369730, 'Asia/Shanghai') AS dt FORMAT Native"
V0 = "0101026474084461746554696d65425feb63"  # clickhouse-server's bytes for SHANGHAI at version 0


def test_clickhouse_connect_negotiates_54405_and_reads_zoned_datetimes(stack) -> None:
    """clickhouse-connect's probe (``SELECT 1 AS check`` at 54405, its bytes checked) now passes,
    and DateTimes come with their column's zone, as from a server. clickhouse-connect's own
    ``test_protocol_version`` bytes: version 0 unchanged, 54337 with block info and the zone."""
    c = connect(stack.clickhouse, database="default")
    assert c.protocol_version == 54405
    assert c.raw_query(SHANGHAI, settings={"client_protocol_version": 0}).hex() == V0
    raw = c.raw_query(SHANGHAI, settings={"client_protocol_version": 54337})
    assert raw[:8] == native_revision.BLOCK_INFO
    assert raw[14:39].decode() == "DateTime('Asia/Shanghai')"
    assert raw[8:14] + raw[39:] == bytes.fromhex(V0)[:5] + b"\x19" + bytes.fromhex(V0)[14:]
    value = c.query("SELECT toDateTime(1676369730, 'Asia/Shanghai') AS dt").first_row[0]
    assert value == datetime(2023, 2, 14, 18, 15, 30, tzinfo=ZoneInfo("Asia/Shanghai"))


@pytest.mark.parametrize("wait", ["1", "0"])  # whole (query()'s wait_end_of_query), and streamed
def test_every_block_of_a_long_result_carries_block_info_and_its_zones(stack, wait) -> None:
    """A result of several blocks, a zoned DateTime after String, Array, Map, LowCardinality and
    Nullable columns (walked to reach it): each block read back whole, in order, in its zone."""
    c = connect(stack.clickhouse, database="default")
    sql = (
        "SELECT number, toString(number) AS s, range(number % 3) AS a, map('k', number) AS m, "
        "toLowCardinality(toString(number % 5)) AS lc, if(number % 2, NULL, number) AS n, "
        "toDateTime(number, 'Asia/Tokyo') AS t, toDateTime64(number, 3, 'UTC') AS t64 "
        "FROM numbers(150000) SETTINGS max_block_size = 40000"
    )
    with c.query_row_block_stream(sql, settings={"wait_end_of_query": wait}) as stream:
        rows = [row for block in stream for row in block]
    assert len(rows) == 150_000
    tokyo = ZoneInfo("Asia/Tokyo")
    for i in (0, 39_999, 40_000, 149_999):
        number, s, a, m, lc, n, t, t64 = rows[i]
        assert (number, s, a, m, lc, n) == (
            i,
            str(i),
            list(range(i % 3)),
            {"k": i},
            str(i % 5),
            None if i % 2 else i,
        )
        assert t == datetime.fromtimestamp(i, tokyo) and t.tzinfo == tokyo
        assert t64.replace(tzinfo=UTC) == datetime.fromtimestamp(i, UTC)


def test_results_the_engine_does_not_stream_are_split_into_their_blocks(stack, ch_database) -> None:
    """SHOW and a query with external tables run whole: their blocks are found by walking them."""
    from clickhouse_connect.driver.external import ExternalData

    c = connect(stack.clickhouse, database=ch_database)
    assert ("default",) in c.query("SHOW DATABASES").result_rows
    ext = ExternalData(file_name="ext", data=b"1\n2\n", structure="id UInt32")
    r = c.query("SELECT id, toDateTime(id, 'Europe/Berlin') FROM ext ORDER BY id", external_data=ext)
    assert [row[0] for row in r.result_rows] == [1, 2]
    assert r.result_rows[1][1] == datetime.fromtimestamp(2, ZoneInfo("Europe/Berlin"))


def test_versions_and_results_the_front_cannot_write_are_refused_naming_them(stack) -> None:
    base = stack.clickhouse.url

    def status(sql: str, version: str) -> tuple[int, str]:
        q = urllib.parse.urlencode({"query": sql, "client_protocol_version": version})
        try:
            with urllib.request.urlopen(f"{base}/?{q}") as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    code, text = status("SELECT 1 FORMAT Native", "54460")
    assert code == 400 and "client_protocol_version 54460" in text and "BAD_ARGUMENTS" in text
    code, text = status("SELECT 1 FORMAT Native", "new")
    assert code == 400 and "client_protocol_version" in text
    # below 54405 a server sends LowCardinality as its plain type; chdb cannot
    code, text = status("SELECT toLowCardinality('a') FORMAT Native", "54337")
    assert code == 501 and "LowCardinality" in text and "54337" in text
    # other formats do not change with the version, as on a server
    assert status("SELECT 1 FORMAT TabSeparated", "54460") == (200, "1\n")


def test_every_type_chdb_writes_is_walked_to_its_end() -> None:
    """The walk that finds a block's end and a column's type name: exact for every type whose
    length follows from it, checked against chdb's own blocks (one per streamed fetch)."""
    from chdb import session

    s = session.Session(tempfile.mkdtemp())
    s.query(
        "CREATE TABLE geo (id UInt32, nest Nested(a UInt8, b String), p Point, r Ring, pg Polygon, "
        "mp MultiPolygon, sa SimpleAggregateFunction(sum, UInt64)) ENGINE = MergeTree ORDER BY id"
    )
    s.query(
        "INSERT INTO geo VALUES (1, [1, 2], ['x', 'yy'], (1.5, 2.5), [(1, 2)], [[(1, 2)]], [[[(1, 2)]]], 7)"
    )
    queries = [
        "SELECT toUInt8(1), toInt16(-2), toUInt32(3), toInt64(-4), toUInt128(5), toInt256(-6), toFloat32(1.5), "
        "toFloat64(2.5), toBFloat16(1.5), toDecimal32(1.5, 2), toDecimal64(2.5, 4), toDecimal128(3.5, 6), "
        "toDecimal256(4.5, 8), CAST(1.25 AS Decimal(10, 2)) FROM numbers(5)",
        "SELECT toString(number), repeat('x', number * 100), toFixedString('ab', 3) FROM numbers(300)",
        "SELECT if(number % 2, NULL, number), if(number % 3, NULL, toString(number)), NULL FROM numbers(7)",
        "SELECT range(number), [range(number), []], [], arrayMap(x -> toString(x), range(number)) FROM numbers(6)",
        "SELECT (number, toString(number)), CAST((1, 'a') AS Tuple(index Int32, `odd name` String)), tuple() "
        "FROM numbers(4)",
        "SELECT map('a', number), CAST(map(), 'Map(String, Array(String))') FROM numbers(4)",
        "SELECT toLowCardinality(toString(number % 3)), CAST(if(number % 2, NULL, 'x') AS "
        "LowCardinality(Nullable(String))), [toLowCardinality('q')], CAST([] AS Array(LowCardinality(String))) "
        "FROM numbers(5)",
        "SELECT CAST('a' AS Enum8('a' = 1, 'b,c' = 2)), CAST('b' AS Enum16('a' = 1, 'b' = 300)), toUUID('61f0c404-5cb3-11e7-907b-a6006ad3dba0'), "
        "toIPv4('1.2.3.4'), toIPv6('::1'), toDate('2020-01-01'), toDate32('2020-01-01'), toDateTime(0, 'UTC'), "
        "toDateTime64(0, 3, 'UTC'), true, INTERVAL 1 DAY, [NULL], [[]] FROM numbers(3)",
        "SELECT nest.a, nest.b, nest, p, r, pg, mp, sa FROM geo",
        "SELECT number, toString(number) FROM numbers(200000) SETTINGS max_block_size = 65409",
    ]
    for sql in queries:
        streamed, result = [], s.send_query(sql, "Native")
        while (block := result.fetch()) is not None:
            if block.bytes():
                streamed.append(block.bytes())
        assert native_revision.split(s.query(sql, "Native").bytes()) == streamed, sql
    # a column whose length is in its states is not guessed at
    s.query("CREATE TABLE agg (id UInt32, u AggregateFunction(uniq, UInt64)) ENGINE = MergeTree ORDER BY id")
    s.query("INSERT INTO agg SELECT 1, uniqState(number) FROM numbers(3)")
    with pytest.raises(ValueError, match="AggregateFunction"):
        native_revision.split(s.query("SELECT id, u FROM agg", "Native").bytes())
    s.close()
