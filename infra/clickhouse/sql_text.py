"""Query bytes as the text chdb takes, and the statements the embedded front rewrites for chdb.

ClickHouse reads a query as bytes: a string literal or a heredoc (``$tag$...$tag$``) may hold any
byte, and clickhouse-connect sends binary query parameters (``$name$`` keys with ``bytes``
values: a Parquet file for ``format(Parquet, $p$)``) that way. chdb takes ``str`` and encodes it
as UTF-8, so bytes that are not UTF-8 must become escapes ClickHouse reads back as those bytes:
``\\xHH``. That holds inside quotes only; a heredoc reads escapes as text, so a heredoc holding
such bytes is passed as a quoted literal instead. Telling the two apart takes a lexer of quotes,
comments and heredocs, written here (a few states of ClickHouse's own lexer: no library parses
ClickHouse's SQL from Python).

chdb (clickhouse-local) keeps no metadata files for the ``system`` tables, so ``SHOW CREATE
TABLE system.tables`` fails there ("There is no metadata of table"), where a server answers with
the table's statement (clickhouse-connect's own suite tests it: ``test_show_create``).
``show_create_system`` builds that statement from ``system.columns`` and ``system.tables``, as a
server prints it.
"""

from __future__ import annotations

import re

_HEREDOC = re.compile(rb"\$([A-Za-z0-9_]*)\$")
_SPECIAL = re.compile(rb"['\"`$#]|--|/\*")
_WORD_BYTE = re.compile(rb"[A-Za-z0-9_$]")
_PLAIN = frozenset(range(0x20, 0x7F)) - {ord("'"), ord("\\")}

# SHOW CREATE [TEMPORARY] [TABLE|VIEW|DICTIONARY] system.<name> [FORMAT f] [;]
_SHOW_CREATE_SYSTEM = re.compile(
    r"^\s*SHOW\s+CREATE\s+(?:TEMPORARY\s+)?(?:(?:TABLE|VIEW|DICTIONARY)\s+)?"
    r"(?:system|`system`)\s*\.\s*(?:`((?:[^`\\]|\\.|``)+)`|([A-Za-z_][A-Za-z0-9_]*))"
    r"(\s+FORMAT\s+\w+)?\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
NO_METADATA = "There is no metadata of table"  # chdb's error for SHOW CREATE of a system table


def query_text(data: bytes) -> str:
    """``data`` as text that means the same bytes to ClickHouse (see the module doc)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out: list[str] = []
    i, n = 0, len(data)
    while i < n:
        m = _SPECIAL.search(data, i)
        start = n if m is None else m.start()
        out.append(_escaped_text(data[i:start]))
        if m is None:
            break
        i = _token(data, start, out)
    return "".join(out)


def _token(data: bytes, i: int, out: list[str]) -> int:
    """Append the token at ``data[i]`` (a quote, comment or heredoc) to ``out``; its end."""
    n, c = len(data), data[i : i + 1]
    if c in (b"'", b'"', b"`"):
        j = i + 1
        while j < n:
            if data[j] == 0x5C:  # backslash: the next byte is escaped
                j += 2
            elif data[j] == c[0]:
                if data[j + 1 : j + 2] == c:  # a doubled quote
                    j += 2
                else:
                    break
            else:
                j += 1
        end = min(j + 1, n)
        out.append(_escaped_text(data[i:end]))
        return end
    if c == b"#" or data.startswith(b"--", i):
        j = data.find(b"\n", i)
        end = n if j < 0 else j
        out.append(data[i:end].decode("utf-8", errors="replace"))  # a comment: its bytes do not matter
        return end
    if data.startswith(b"/*", i):
        j = data.find(b"*/", i + 2)
        end = n if j < 0 else j + 2
        out.append(data[i:end].decode("utf-8", errors="replace"))
        return end
    # "$": a heredoc where a token starts, else a byte of a word (``a$b``)
    m = _HEREDOC.match(data, i)
    after_word = i > 0 and _WORD_BYTE.match(data, i - 1) is not None
    close = -1 if m is None or after_word else data.find(m.group(0), m.end())
    if m is None or close < 0:
        out.append("$")
        return i + 1
    body = data[m.end() : close]
    try:
        out.append(data[i : close + len(m.group(0))].decode("utf-8"))
    except UnicodeDecodeError:  # as a quoted literal, each byte that is not plain ASCII escaped
        out.append("'" + "".join(chr(b) if b in _PLAIN else f"\\x{b:02x}" for b in body) + "'")
    return close + len(m.group(0))


def _escaped_text(piece: bytes) -> str:
    """Each byte that is not UTF-8 as ``\\xHH``, the escape ClickHouse reads back as that byte
    inside quotes (outside them such a byte is a syntax error either way)."""
    return piece.decode("utf-8", errors="backslashreplace")


def system_table(sql: str) -> tuple[str, str] | None:
    """``(name, " FORMAT f" or "")`` when ``sql`` is SHOW CREATE of a ``system`` table, else None."""
    m = _SHOW_CREATE_SYSTEM.match(sql)
    if m is None:
        return None
    name = m.group(1) if m.group(1) is not None else m.group(2)
    return re.sub(r"\\(.)|``", lambda e: e.group(1) or "`", name), m.group(3) or ""


def show_create_system(name: str, fmt_clause: str) -> str:
    """A query whose one row, column ``statement``, is the CREATE statement of ``system.<name>``
    as a server prints it: columns in order, back-quoted, with their type, default and comment,
    the engine, the table's comment."""
    lit = _literal(name)
    shown = name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else "`" + name.replace("`", "\\`") + "`"
    column = (
        f"concat('    ', {_quoted('name', '`')}, ' ', type, "
        "if(default_kind != '', concat(' ', default_kind, ' ', default_expression), ''), "
        f"if(comment != '', concat(' COMMENT ', {_quoted('comment', chr(39))}), ''))"
    )
    table_comment = _quoted("any(comment)", "'")
    return (
        f"SELECT concat({_literal('CREATE TABLE system.' + shown)}, '\\n(\\n', "
        f"arrayStringConcat(arrayMap(x -> x.2, arraySort(groupArray((position, {column})))), ',\\n'), "
        "'\\n)\\nENGINE = ', "
        f"(SELECT any(engine) FROM system.tables WHERE database = 'system' AND name = {lit}), "
        f"(SELECT if(any(comment) != '', concat('\\nCOMMENT ', {table_comment}), '') "
        f"FROM system.tables WHERE database = 'system' AND name = {lit})) AS statement "
        f"FROM system.columns WHERE database = 'system' AND table = {lit}{fmt_clause}"
    )


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quoted(expr: str, quote: str) -> str:
    """SQL that quotes ``expr``'s value with ``quote`` (backslash and the quote escaped), as
    ClickHouse prints names and comments; chdb has no ``quoteString``/``backQuote``."""
    q = _literal(quote)
    return f"concat({q}, replaceAll(replaceAll({expr}, '\\\\', '\\\\\\\\'), {q}, {_literal(chr(92) + quote)}), {q})"
