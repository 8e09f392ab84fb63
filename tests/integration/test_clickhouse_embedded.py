"""clickhouse-connect against the embedded server: the protocol a real server speaks."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from infra.clickhouse.client import connect


def test_insert_100k_rows_and_aggregate(stack, ch_database) -> None:
    c = connect(stack.clickhouse, database=ch_database)
    c.command("CREATE TABLE t (id UInt64, s String, f Float64, d DateTime64(3)) ENGINE=MergeTree ORDER BY id")
    import datetime as dt

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = [
        (i, f'it\'s \x00 "q" ünïcødé {i}', i * 0.5, t0 + dt.timedelta(milliseconds=i)) for i in range(100_000)
    ]
    summary = c.insert("t", rows, column_names=["id", "s", "f", "d"])
    assert summary.written_rows == 100_000  # X-ClickHouse-Summary, as a server sends it
    c.command("CREATE TABLE t10 AS t")
    assert c.command("INSERT INTO t10 (id) SELECT number FROM numbers(10)").written_rows == 10
    count, total, mx = c.query("SELECT count(), sum(id), max(f) FROM t").result_rows[0]
    assert (count, total, mx) == (100_000, sum(range(100_000)), 99_999 * 0.5)
    # binary-safe: NUL, quotes and unicode come back byte for byte
    assert c.query("SELECT s FROM t WHERE id = 7").result_rows == [(rows[7][1],)]
    # query parameters
    r = c.query(
        "SELECT count() FROM t WHERE id >= {lo:UInt64} AND s LIKE {pat:String}",
        parameters={"lo": 99_990, "pat": "%99999"},
    )
    assert r.result_rows == [(1,)]
    # streaming reads
    with c.query_row_block_stream("SELECT id FROM t ORDER BY id") as stream:
        seen = sum(len(block) for block in stream)
    assert seen == 100_000


@pytest.mark.parametrize("compress", ["lz4", "zstd", "gzip"])
def test_compressed_inserts(stack, ch_database, compress) -> None:
    c = connect(stack.clickhouse, database=ch_database, compress=compress)
    c.command("CREATE TABLE IF NOT EXISTS z (id UInt32, s String) ENGINE=MergeTree ORDER BY id")
    c.insert("z", [(i, "x" * (i % 50)) for i in range(20_000)], column_names=["id", "s"])
    assert c.query("SELECT count(), sum(length(s)) FROM z").result_rows == [
        (20_000, sum(i % 50 for i in range(20_000)))
    ]


def test_an_insert_with_a_settings_clause(stack, ch_database) -> None:
    """ClickHouse puts an insert's SETTINGS before FORMAT; the front's FROM INFILE rewrite keeps them valid."""
    base = stack.clickhouse.url
    c = connect(stack.clickhouse, database=ch_database)
    c.command("CREATE TABLE st (id UInt32, s String) ENGINE=MergeTree ORDER BY id")
    sql = f"INSERT INTO {ch_database}.st SETTINGS input_format_skip_unknown_fields = 1 FORMAT JSONEachRow"
    body = b'{"id": 1, "s": "a", "extra": 5}\n{"id": 2, "s": "b"}\n'
    with urllib.request.urlopen(
        urllib.request.Request(f"{base}/?query={urllib.parse.quote(sql)}", data=body)
    ) as r:
        assert r.status == 200
    with urllib.request.urlopen(urllib.request.Request(f"{base}/", data=sql.encode() + b"\n" + body)) as r:
        assert r.status == 200  # the statement on the body's first line
    assert c.query("SELECT id, s FROM st ORDER BY id").result_rows == [(1, "a"), (1, "a"), (2, "b"), (2, "b")]


def test_plain_http_and_formats(stack) -> None:
    base = stack.clickhouse.url
    with urllib.request.urlopen(f"{base}/?query=SELECT+1") as r:
        assert r.read() == b"1\n"
    q = urllib.parse.quote("SELECT number AS n FROM numbers(3) FORMAT JSONEachRow")
    with urllib.request.urlopen(f"{base}/?query={q}") as r:
        assert r.read().decode().splitlines() == ['{"n":0}', '{"n":1}', '{"n":2}']
    req = urllib.request.Request(f"{base}/?default_format=TSV", data=b"SELECT 'a\\tb', 2")
    with urllib.request.urlopen(req) as r:
        assert r.read() == b"a\\tb\t2\n"
    with urllib.request.urlopen(f"{base}/ping") as r:
        assert r.read() == b"Ok.\n"
    # query bytes that are not UTF-8, as ClickHouse takes them: in the body, the URL and a parameter
    with urllib.request.urlopen(urllib.request.Request(f"{base}/", data=b"SELECT hex('\xff\xfe')")) as r:
        assert r.read() == b"FFFE\n"
    with urllib.request.urlopen(f"{base}/?query=SELECT+hex(%27%FF%27)") as r:
        assert r.read() == b"FF\n"
    with urllib.request.urlopen(f"{base}/?query=SELECT+hex(%7Bp:String%7D)&param_p=%FF") as r:
        assert r.read() == b"FF\n"
    with urllib.request.urlopen(f"{base}/?query=SELECT+1&query_id=my-query-7") as r:
        assert r.headers["X-ClickHouse-Query-Id"] == "my-query-7"  # a caller's query_id comes back
        assert json.loads(r.headers["X-ClickHouse-Summary"])["result_rows"] == "1"


def test_errors_are_clickhouse_errors(stack) -> None:
    base = stack.clickhouse.url
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{base}/?query=" + urllib.parse.quote("SELECT * FROM no_such_table"))
    assert err.value.code == 404
    assert err.value.headers["X-ClickHouse-Exception-Code"] == "60"
    assert err.value.read().startswith(b"Code: 60. DB::Exception:")

    c = connect(stack.clickhouse, database="default")
    with pytest.raises(DatabaseError, match="code: 62"):
        c.query("SELEC 1")


def test_tables_keep_rows_only_as_long_as_their_topics_keep_events(stack, ch_database) -> None:
    import datetime as dt

    from infra.clickhouse.migrate import migrate
    from infra.clickhouse.tables import event_table
    from schemas.events import Endpoint, InferenceRequested
    from schemas.topics import REQUESTED

    c = connect(stack.clickhouse, database=ch_database)
    migrate(c, ch_database, ttls={})
    create = c.command(f"SHOW CREATE TABLE {ch_database}.inference_requested")
    assert "TTL toDateTime(occurred_at) + toIntervalDay(7)" in str(create)
    assert " TTL " not in str(c.command(f"SHOW CREATE TABLE {ch_database}.model_versions"))
    table = event_table(REQUESTED)
    now = dt.datetime.now(dt.UTC)
    rows = [
        table.row(
            InferenceRequested(
                producer="t", request_id=rid, model="m", endpoint=Endpoint.chat, prompt="p", occurred_at=at
            ).to_avro(),
            0,
            i,
        )
        for i, (rid, at) in enumerate([("old", now - dt.timedelta(days=10)), ("new", now)])
    ]
    c.insert(f"{ch_database}.inference_requested", rows, column_names=table.column_names)
    c.command(f"OPTIMIZE TABLE {ch_database}.inference_requested FINAL")
    left = c.query(f"SELECT request_id FROM {ch_database}.inference_requested").result_rows
    assert left == [("new",)]
    migrate(c, ch_database, ttls={"inference_requested": 0})  # keep forever: the TTL is removed
    assert " TTL " not in str(c.command(f"SHOW CREATE TABLE {ch_database}.inference_requested"))


def test_a_sink_batch_is_written_as_one_compact_part_where_the_default_writes_it_wide(
    stack, ch_database
) -> None:
    """Migration 0008: a batch the size the sink writes (~15 MiB of completions, over ClickHouse's
    10 MiB default) stays a compact part in an event table; the same insert into a table without the
    setting is written wide."""
    from infra.clickhouse.migrate import migrate

    c = connect(stack.clickhouse, database=ch_database)
    migrate(c, ch_database)
    c.command(f"CREATE TABLE {ch_database}.as_default AS {ch_database}.inference_completed")
    c.command(f"ALTER TABLE {ch_database}.as_default RESET SETTING min_bytes_for_wide_part")
    batch = (
        "(event_id, occurred_at, completion) SELECT generateUUIDv4(), now64(3), "
        "concat(toString(number), ' ', randomPrintableASCII(2000)) FROM numbers(8000)"
    )
    for table in ("inference_completed", "as_default"):
        c.command(f"INSERT INTO {ch_database}.{table} {batch}")
    parts = dict(
        c.query(
            "SELECT table, part_type FROM system.parts WHERE database = {db:String} AND active "
            "AND table IN ('inference_completed', 'as_default')",
            parameters={"db": ch_database},
        ).result_rows
    )
    assert parts == {"inference_completed": "Compact", "as_default": "Wide"}


KAFKA_TABLE = (
    "CREATE TABLE kq (x String) ENGINE = Kafka SETTINGS kafka_broker_list = '127.0.0.1:1', "
    "kafka_topic_list = 't', kafka_group_name = 'g', kafka_format = 'JSONEachRow'"
)


def test_a_kafka_engine_table_is_refused_and_leaves_nothing_behind(stack, ch_database) -> None:
    """chdb cannot run the Kafka engine; once, such a CREATE failed but left metadata that stopped
    every later start. The front refuses it, naming what to use instead."""
    c = connect(stack.clickhouse, database=ch_database)
    with pytest.raises(DatabaseError) as refused:
        c.command(KAFKA_TABLE)
    assert "Code: 48" in str(refused.value) and "cannot run in the embedded" in str(refused.value)
    assert "RFTLOOP_CLICKHOUSE_URL" in str(refused.value)
    req = urllib.request.Request(f"{stack.clickhouse.url}/?database={ch_database}", data=KAFKA_TABLE.encode())
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(req)
    assert http.value.code == 501 and http.value.headers["X-ClickHouse-Exception-Code"] == "48"
    assert c.query("SELECT count() FROM system.tables WHERE database = currentDatabase()").result_rows == [
        (0,)
    ]


def test_a_table_that_fails_to_load_is_detached_and_the_server_starts(tmp_path) -> None:
    """A Kafka table made behind the front's back (chdb directly) fails to load at every start; the
    server detaches it (ClickHouse's .sql.detached), keeps the other tables, and status says so."""
    import subprocess
    import sys

    from infra.local import services
    from infra.local.process import free_port
    from infra.settings import ClickHouseSettings, LocalStackSettings

    data = tmp_path / "data" / "clickhouse"
    make = (
        "import sys\nfrom chdb import session\ns = session.Session(sys.argv[1])\n"
        "s.query('CREATE TABLE ok (x Int32) ENGINE = MergeTree ORDER BY x')\n"
        "s.query('INSERT INTO ok VALUES (1), (2)')\n"
        "try:\n    s.query(sys.argv[2])\nexcept Exception as exc:\n    print(exc)\n"
    )
    made = subprocess.run(
        [sys.executable, "-c", make, str(data), KAFKA_TABLE], capture_output=True, text=True
    )
    assert "Shutdown was called" in made.stdout, made  # what chdb does with it: fails, leaves metadata
    assert (data / "metadata" / "default" / "kq.sql").exists()
    settings = LocalStackSettings(
        state_dir=tmp_path,
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        registry_port=free_port(),
        clickhouse_port=free_port(),
    )
    ch = services.clickhouse(settings)
    try:
        assert ch.start() != ""
        healthy, detail = ch.status()
        assert healthy and "DETACHED 1 table(s)" in detail and "default.kq" in detail, detail
        c = connect(
            ClickHouseSettings(url=f"http://127.0.0.1:{settings.clickhouse_port}"), database="default"
        )
        assert c.query("SELECT count() FROM ok").result_rows == [(2,)]
        assert (data / "metadata" / "default" / "kq.sql.detached").exists()
        assert c.query("SELECT count() FROM system.tables WHERE name = 'kq'").result_rows == [(0,)]
    finally:
        ch.stop()


def test_reads_and_inserts_do_not_wait_behind_a_running_query(stack, ch_database) -> None:
    """Requests borrow sessions from a pool: while one query runs (3 s of sleepEachRow), another
    client inserts and reads, and both finish before it does (one lock once queued them)."""
    import threading

    c = connect(stack.clickhouse, database=ch_database)
    c.command("CREATE TABLE busy (id UInt32) ENGINE = MergeTree ORDER BY id")
    running, finished = threading.Event(), threading.Event()

    def long_query() -> None:
        slow = connect(stack.clickhouse, database=ch_database)
        running.set()
        slow.query("SELECT sleepEachRow(1) FROM numbers(3) SETTINGS max_block_size = 1")
        finished.set()

    t = threading.Thread(target=long_query)
    t.start()
    try:
        running.wait(10)
        c.query("SELECT 1")  # the long query has been sent by now or is about to be
        c.insert("busy", [(i,) for i in range(100)], column_names=["id"])
        assert c.query("SELECT count() FROM busy").result_rows == [(100,)]
        done_first = not finished.is_set()
    finally:
        t.join(30)
    assert finished.is_set()
    assert done_first, "the insert and the read waited for the running query"


def test_a_session_id_keeps_its_temporary_tables(stack) -> None:
    """ClickHouse's HTTP sessions: requests with one session_id share a session (its temporary
    tables); other requests do not see them."""
    base = stack.clickhouse.url

    def run(sql: str, session: str | None = None) -> bytes:
        url = f"{base}/" + (f"?session_id={session}" if session else "")
        with urllib.request.urlopen(urllib.request.Request(url, data=sql.encode())) as r:
            return bytes(r.read())

    run("CREATE TEMPORARY TABLE tmp (x Int32)", "s1")
    run("INSERT INTO tmp VALUES (1), (2)", "s1")
    assert run("SELECT count() FROM tmp", "s1") == b"2\n"
    with pytest.raises(urllib.error.HTTPError) as outside:
        run("SELECT count() FROM tmp")
    assert outside.value.headers["X-ClickHouse-Exception-Code"] == "60"


def test_external_tables_from_multipart_form_data(stack, ch_database) -> None:
    """clickhouse-connect's external_data (multipart/form-data): tables for one query, by structure
    or by types, in a named format, joined with a stored table; gone after the query."""
    from clickhouse_connect.driver.external import ExternalData

    c = connect(stack.clickhouse, database=ch_database)
    c.command("CREATE TABLE users (id UInt32, name String) ENGINE=MergeTree ORDER BY id")
    c.insert("users", [(1, "ann"), (2, "bob"), (3, "cy")], column_names=["id", "name"])
    ext = ExternalData(
        file_name="wanted.csv", data=b"1,x\n3,y\n", fmt="CSV", structure="id UInt32, tag String"
    )
    ext.add_file(file_name="extra", data=b"7\tq\n", types="UInt8,String")
    r = c.query(
        "SELECT u.name, w.tag, (SELECT sum(_1) FROM extra) FROM users AS u "
        "INNER JOIN wanted AS w ON u.id = w.id WHERE u.id >= {lo:UInt32} ORDER BY u.id",
        parameters={"lo": 1},
        external_data=ext,
    )
    assert r.result_rows == [("ann", "x", 7), ("cy", "y", 7)]
    # the tables were the query's only: the next query on a pooled session does not see them
    with pytest.raises(DatabaseError, match="wanted"):
        c.query("SELECT count() FROM wanted")
    # a table without structure or types is refused with ClickHouse's reason
    with pytest.raises(DatabaseError, match="structure nor types"):
        c.query("SELECT count() FROM t1", external_data=ExternalData(file_name="t1", data=b"1\n"))


def _post_raw(base: str, sql: str, head_length: int, body: bytes) -> bytes:
    """POST ``body`` for ``sql`` on a raw socket, declaring ``head_length`` bytes, then end the
    sending side: the whole answer (headers and body, which may come in separate segments)."""
    import http.client
    import socket

    host, port = urllib.parse.urlsplit(base).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(
            f"POST /?query={urllib.parse.quote(sql)} HTTP/1.1\r\nHost: x\r\nContent-Length: {head_length}\r\n\r\n".encode()
            + body
        )
        s.shutdown(socket.SHUT_WR)
        answer = http.client.HTTPResponse(s)
        answer.begin()
        return f"HTTP/1.1 {answer.status}\r\n".encode() + answer.read()


def test_an_insert_streams_in_and_a_body_cut_short_inserts_nothing(stack, ch_database) -> None:
    """Insert data streams into the engine as it arrives (no temp file). A client that dies
    mid-body (fewer bytes than its Content-Length) gets an error, and none of its rows are in."""
    c = connect(stack.clickhouse, database=ch_database)
    c.command("CREATE TABLE cut (id UInt32, s String) ENGINE = MergeTree ORDER BY id")
    rows = b"".join(b"%d\tsome text\n" % i for i in range(50_000))
    answer = _post_raw(
        stack.clickhouse.url, f"INSERT INTO {ch_database}.cut FORMAT TSV", len(rows) + 10, rows
    )
    assert answer.startswith(b"HTTP/1.1 5") and b"ended early" in answer
    assert c.query("SELECT count() FROM cut").result_rows == [(0,)]
    # whole, the same body goes in
    with urllib.request.urlopen(
        urllib.request.Request(
            f"{stack.clickhouse.url}/?query={urllib.parse.quote(f'INSERT INTO {ch_database}.cut FORMAT TSV')}",
            data=rows,
        )
    ) as r:
        assert json.loads(r.headers["X-ClickHouse-Summary"])["written_rows"] == "50000"
    assert c.query("SELECT count(), max(id) FROM cut").result_rows == [(50_000, 49_999)]


def test_refused_insert_data_answers_the_error_and_the_connection_goes_on(stack, ch_database) -> None:
    """Data the engine refuses in the middle of a large body, and an input() insert into a table that
    does not exist (the engine never reads the body): each answers ClickHouse's error, the rest of
    the body is read and dropped, and the same client's next requests work."""
    c = connect(stack.clickhouse, database=ch_database)
    c.command("CREATE TABLE refused (id UInt32) ENGINE = MergeTree ORDER BY id")
    bad = b"".join(b"%d\n" % i for i in range(200_000)) + b"not a number\n" + b"1\n" * 200_000
    with pytest.raises(DatabaseError, match="Code: 27"):
        c.raw_insert("refused", ["id"], bad, fmt="TSV")
    assert c.query("SELECT count() FROM refused").result_rows == [(0,)]
    with pytest.raises(DatabaseError, match="Code: 60"):
        c.raw_insert(
            "no_such_table (id) SELECT id FROM input('id UInt32')", None, iter((b"1\n" * 500_000,)), fmt="TSV"
        )
    c.raw_insert("refused (id) SELECT id * 2 FROM input('id UInt32')", None, iter((b"1\n2\n",)), fmt="TSV")
    assert c.query("SELECT sum(id) FROM refused").result_rows == [(6,)]


def test_a_streamed_result_that_fails_part_way_ends_with_clickhouses_exception_block(stack) -> None:
    """wait_end_of_query=0: rows go out as the engine produces them. A query that fails after 100 of
    them cannot change the 200 any more, so the body ends with the exception block framed by the
    X-ClickHouse-Exception-Tag, which clickhouse-connect raises as StreamFailureError (the test of
    its own suite, test_mid_stream_exception). A stream whose client goes away stops its query and
    frees its session: the pool's 4 sessions serve the requests after 6 abandoned streams."""
    import http.client
    import re

    from clickhouse_connect.driver.exceptions import StreamFailureError

    c = connect(stack.clickhouse, database="default")
    failing = "SELECT sleepEachRow(0.01), throwIf(number = 100) FROM numbers(200)"
    streamed = {"max_block_size": 1, "wait_end_of_query": 0}
    with pytest.raises(StreamFailureError, match=r"Code: 395\. DB::Exception: Value passed to 'throwIf'"):
        _ = c.query(failing, settings=streamed).result_set
    with (
        pytest.raises(StreamFailureError, match="Code: 395"),
        c.query_rows_stream(failing, settings=streamed) as rows,
    ):
        for _ in rows:
            pass
    assert c.command("SELECT 1") == 1
    # a long result streams whole and equals the buffered one
    whole = "SELECT number, toString(number) FROM numbers(300000)"
    assert c.query(whole, settings={"wait_end_of_query": 0}).result_rows == c.query(whole).result_rows
    # an error before any row is still an ordinary error with its status
    with pytest.raises(DatabaseError, match="Code: 60") as err:
        c.query("SELECT * FROM no_such_table", settings={"wait_end_of_query": 0})
    assert not isinstance(err.value, StreamFailureError)
    # the wire: chunked, the tag in the header, the block at the end of the body
    url = urllib.parse.urlsplit(stack.clickhouse.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    query = urllib.parse.urlencode(
        {"query": failing + " FORMAT TSV", "wait_end_of_query": "0", "max_block_size": "1", "user": "default"}
    )
    auth = stack.clickhouse.password.get_secret_value()
    conn.request("GET", f"/?{query}", headers={"X-ClickHouse-Key": auth} if auth else {})
    r = conn.getresponse()
    tag = r.headers["X-ClickHouse-Exception-Tag"]
    body = r.read()
    assert r.status == 200 and r.headers["Transfer-Encoding"] == "chunked"
    assert re.fullmatch(r"[a-z0-9]{16}", tag)
    assert body.index(b"__exception__") == 400 == 4 * body.count(b"0\t0\n")  # the 100 rows before it
    assert re.search(
        rb"__exception__\r\n"
        + tag.encode()
        + rb"\r\nCode: 395\. .*\n\d+ "
        + tag.encode()
        + rb"\r\n__exception__\r\n$",
        body,
        re.S,
    )
    conn.close()
    # clients that leave mid-stream: each stream's query is stopped and its session returned
    slow = urllib.parse.urlencode(
        {
            "query": "SELECT sleepEachRow(0.05) FROM numbers(1000) FORMAT TSV",
            "wait_end_of_query": "0",
            "max_block_size": "1",
        }
    )
    for _ in range(6):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.request("GET", f"/?{slow}", headers={"X-ClickHouse-Key": auth} if auth else {})
        resp = conn.getresponse()
        assert resp.read(2) == b"0\n"
        conn.close()
    import time

    t0 = time.monotonic()
    assert [c.command("SELECT 1") for _ in range(8)] == [1] * 8
    assert time.monotonic() - t0 < 10, "the abandoned streams held the pool's sessions"


def test_a_result_streams_unless_the_caller_waits_for_its_end_as_from_a_server(stack) -> None:
    """A server streams unless asked ``wait_end_of_query=1`` (clickhouse-connect asks it for query(),
    not for its stream methods): the headers go with the first block. A ``buffer_size`` above the
    default holds that much first, so a result, or an error, within it is answered whole."""
    from clickhouse_connect.driver.exceptions import StreamFailureError

    c = connect(stack.clickhouse, database="default")
    failing = (  # clickhouse-connect's own test_stream_failure_sync: fails at row 300,000
        "SELECT toString(cityHash64(number)) FROM numbers(10000000) WHERE intDiv(1, number - 300000) > -100000000"
    )
    with (
        pytest.raises(StreamFailureError, match="Division by zero"),
        c.query_row_block_stream(failing) as blocks,
    ):
        for _ in blocks:
            pass
    with c.query_rows_stream("SELECT number FROM numbers(10000)") as rows:
        assert sum(row[0] for row in rows) == 49_995_000
    base = stack.clickhouse.url

    def get(sql: str, **params: str):
        query = urllib.parse.urlencode({"query": sql, **params})
        return urllib.request.urlopen(f"{base}/?{query}")

    with get("SELECT number FROM numbers(3)") as r:
        assert r.headers["Transfer-Encoding"] == "chunked" and r.read() == b"0\n1\n2\n"
        assert json.loads(r.headers["X-ClickHouse-Summary"])["result_rows"] == "3"  # the progress so far
    with get("SELECT number FROM numbers(3)", wait_end_of_query="1") as r:
        assert r.headers["Content-Length"] == "6" and r.read() == b"0\n1\n2\n"
    with get("SHOW DATABASES") as r:  # a statement chdb does not stream is answered whole
        assert b"system\n" in r.read()
    with get("SELECT number FROM numbers(100000)", buffer_size=str(8 << 20)) as r:
        assert r.headers["Content-Length"] == str(len(r.read()))  # the whole result fits the buffer
    with pytest.raises(urllib.error.HTTPError) as err:  # fails within the buffer: an ordinary error
        get(
            "SELECT throwIf(number = 5000) FROM numbers(10000)",
            buffer_size=str(8 << 20),
            max_block_size="100",
        )
    assert err.value.code == 500 and err.value.headers["X-ClickHouse-Exception-Code"] == "395"


def test_binary_query_parameters_reach_the_engine_byte_for_byte(stack) -> None:
    """clickhouse-connect sends a ``$name$`` parameter's bytes inside the query (a heredoc), as in its
    own ``test_embedded_binary``: a Parquet file is not UTF-8, and its bytes must arrive unchanged."""
    c = connect(stack.clickhouse, database="default")
    parquet = c.raw_query(
        "SELECT toString(number) AS movie, number / 2 AS rating FROM numbers(300) FORMAT Parquet"
    )
    assert parquet.startswith(b"PAR1")
    r = c.query(
        "SELECT count(), min(movie), sum(rating) FROM format(Parquet, $parquet$)",
        parameters={"$parquet$": parquet},
    )
    assert r.result_rows == [(300, "0", sum(range(300)) / 2)]
    every_byte = bytes(range(256))
    assert c.query("SELECT hex($b$) AS h", parameters={"$b$": every_byte}).result_rows == [
        (every_byte.hex().upper(),)
    ]
    # a parameter used twice, and a UTF-8 heredoc written in the query, unchanged
    r = c.query(
        "SELECT $m$ AS m1, $m$ AS m2, $h$é'\\$h$ AS h WHERE m1 = 'foobar'", parameters={"$m$": b"foobar"}
    )
    assert r.result_rows == [("foobar", "foobar", "é'\\")]


def test_show_create_of_a_system_table_answers_its_statement(stack) -> None:
    """chdb keeps no metadata of system tables; the front answers SHOW CREATE as a server does."""
    c = connect(stack.clickhouse, database="default")
    r = c.query("SHOW CREATE TABLE system.tables")
    assert r.column_names == ("statement",)
    statement = r.result_rows[0][0]
    assert statement.startswith("CREATE TABLE system.tables\n(\n    `database` String COMMENT ")
    assert "\n    `name` String COMMENT 'Table name.',\n" in statement
    assert "\n)\nENGINE = SystemTables\nCOMMENT '" in statement
    assert c.query("SHOW CREATE system.numbers").result_rows[0][0] == (
        "CREATE TABLE system.numbers\n(\n    `number` UInt64\n)\nENGINE = SystemNumbers\nCOMMENT "
        "'Generates all natural numbers, starting from 0 (to 2^64 - 1, and then again) in sorted order.'"
    )
    raw = c.raw_query("SHOW CREATE TABLE `system`.`numbers` FORMAT JSONEachRow")
    assert json.loads(raw)["statement"].startswith("CREATE TABLE system.numbers\n")
    with pytest.raises(DatabaseError, match="code: 60"):  # no such table: the engine's own error
        c.query("SHOW CREATE TABLE system.no_such_table")
    c.command("CREATE TABLE IF NOT EXISTS default.sc_user (id UInt32) ENGINE = MergeTree ORDER BY id")
    assert (
        c.query("SHOW CREATE TABLE default.sc_user")
        .result_rows[0][0]
        .startswith("CREATE TABLE default.sc_user")
    )
    c.command("DROP TABLE default.sc_user")


def test_the_result_timezone_header_follows_the_callers_session_timezone(stack) -> None:
    """A server names the zone of the result's DateTimes in X-ClickHouse-Timezone: the caller's
    ``session_timezone``, else its own; clickhouse-connect reads DateTimes in that zone."""
    base = stack.clickhouse.url
    with urllib.request.urlopen(f"{base}/?query=SELECT+serverTimezone()") as r:
        assert r.headers["X-ClickHouse-Timezone"] == r.read().decode().strip()
    with urllib.request.urlopen(f"{base}/?query=SELECT+1&session_timezone=America/Denver") as r:
        assert r.headers["X-ClickHouse-Timezone"] == "America/Denver"
    c = connect(stack.clickhouse, database="default")
    sql = "SELECT toDateTime('2022-10-25 10:55:22')"
    for wait in ("1", "0"):  # buffered, and streamed as produced
        value = c.query(
            sql, settings={"session_timezone": "America/Denver", "wait_end_of_query": wait}
        ).first_row[0]
        assert (value.hour, str(value.tzinfo)) == (10, "America/Denver")
