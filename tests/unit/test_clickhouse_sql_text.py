"""Query bytes as text for chdb: bytes that are not UTF-8 become escapes ClickHouse reads back."""

from infra.clickhouse.sql_text import query_text, show_create_system, system_table


def test_utf8_text_passes_unchanged() -> None:
    q = "SELECT 'é', $h$\\x$h$ -- ü\n"
    assert query_text(q.encode()) == q


def test_bytes_in_quotes_become_escapes() -> None:
    assert query_text(b"SELECT '\xff\\'\xfe', `c\xfd` FROM t") == "SELECT '\\xff\\'\\xfe', `c\\xfd` FROM t"
    assert query_text(b"SELECT 'it''s \xff'") == "SELECT 'it''s \\xff'"


def test_a_heredoc_with_bytes_becomes_a_quoted_literal() -> None:
    assert query_text(b"SELECT $p$\xffa'\\\n$p$ + 1") == "SELECT '\\xffa\\x27\\x5c\\x0a' + 1"
    assert query_text(b"SELECT $$\x00\x80$$") == "SELECT '\\x00\\x80'"
    # a heredoc without such bytes stays one, even beside one that has them
    assert query_text(b"SELECT $a$x'y$a$, $b$\xff$b$") == "SELECT $a$x'y$a$, '\\xff'"


def test_quotes_and_comments_hide_dollars_and_a_word_is_not_a_heredoc() -> None:
    assert query_text(b"SELECT '$p$' , a$p$b -- $p$ \xff\nFROM t /* $p$ */ WHERE x = '\xff'") == (
        "SELECT '$p$' , a$p$b -- $p$ \ufffd\nFROM t /* $p$ */ WHERE x = '\\xff'"
    )
    assert query_text(b"SELECT $p$ \xff") == "SELECT $p$ \\xff"  # no closing tag: left as it came


def test_show_create_of_system_tables_is_recognised() -> None:
    assert system_table("SHOW CREATE TABLE system.tables") == ("tables", "")
    assert system_table("show create `system`.`my``t` FORMAT JSONEachRow;") == ("my`t", " FORMAT JSONEachRow")
    assert system_table("SHOW CREATE TABLE db.tables") is None
    assert system_table("SELECT 1") is None
    sql = show_create_system("my'table", "")
    assert "name = 'my\\'table'" in sql and "CREATE TABLE system.`my\\'table`" in sql
