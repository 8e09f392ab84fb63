"""ClickHouse's HTTP external tables (``multipart/form-data``) for the embedded front.

A client may send data for a query to use as a table without creating one (clickhouse-connect's
``external_data``, curl's ``-F``): a ``multipart/form-data`` body whose file parts are the tables,
named by the part's ``name``; the URL (or the form) says each one's columns, ``<name>_structure``
(``id UInt32, s String``) or ``<name>_types`` (``UInt32,String``: columns ``_1``, ``_2`` ...), and
``<name>_format`` (TabSeparated by default). Plain form fields are parameters as in the URL:
``query``, ``param_<name>``, settings (ClickHouse's server reads them from the form too).

chdb has no external-table input, so each table becomes a temporary table of the request's session:
``CREATE TEMPORARY TABLE``, the part's bytes loaded ``FROM INFILE`` a temp file (never through a SQL
string), the query, then ``DROP``. The body is parsed with the standard library's MIME parser, the
one ``email`` and ``http`` use, not by hand.
"""

from __future__ import annotations

import email.parser
import email.policy
import os
import tempfile
from dataclasses import dataclass
from email.message import EmailMessage

from infra.clickhouse.embedded_engine import QueryFailed, quote_ident, quote_literal

SUFFIXES = ("_structure", "_types", "_format")


@dataclass
class ExternalTable:
    name: str
    structure: str
    fmt: str
    path: str  # the part's bytes, in a temp file the statements read

    def before(self) -> list[str]:
        return [
            f"CREATE TEMPORARY TABLE {quote_ident(self.name)} ({self.structure}) ENGINE = Memory",
            f"INSERT INTO {quote_ident(self.name)} FROM INFILE {quote_literal(self.path)} FORMAT {self.fmt}",
        ]

    def after(self) -> list[str]:
        return [f"DROP TEMPORARY TABLE IF EXISTS {quote_ident(self.name)}"]


def parse_form(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, bytes]]:
    """(fields, files) of a ``multipart/form-data`` body: text fields by name, file parts by name."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise QueryFailed(1001, "bad request: a multipart/form-data body without parts (no boundary?)")
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for part in message.iter_parts():
        assert isinstance(part, EmailMessage)
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise QueryFailed(1001, "bad request: a form part without a name")
        data = part.get_payload(decode=True)
        payload = data if isinstance(data, bytes) else b""
        if part.get_filename() is not None:
            files[name] = payload
        else:
            fields[name] = payload.decode("utf-8", errors="backslashreplace")
    return fields, files


def tables(files: dict[str, bytes], params: dict[str, str], tmpdir: str | None) -> list[ExternalTable]:
    """One temporary table per file part; its data written to a temp file (the caller unlinks
    ``ExternalTable.path``). A part with neither structure nor types is refused, as a server does."""
    out: list[ExternalTable] = []
    try:
        for name, data in files.items():
            structure = params.get(f"{name}_structure")
            types = params.get(f"{name}_types")
            if not structure and types:
                structure = ", ".join(f"_{i} {t.strip()}" for i, t in enumerate(types.split(","), 1))
            if not structure:
                raise QueryFailed(
                    36,  # BAD_ARGUMENTS
                    f"Neither structure nor types have not been provided for external table {name}. "
                    f"Use fields {name}_structure or {name}_types to do so. (BAD_ARGUMENTS)",
                )
            fd, path = tempfile.mkstemp(dir=tmpdir, suffix=".ext")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            out.append(ExternalTable(name, structure, params.get(f"{name}_format") or "TabSeparated", path))
    except BaseException:
        for t in out:
            os.unlink(t.path)
        raise
    return out


def is_table_param(key: str, files: dict[str, bytes]) -> bool:
    """``<name>_structure`` / ``_types`` / ``_format`` of an external table: not a setting."""
    return any(key == name + suffix for name in files for suffix in SUFFIXES)
