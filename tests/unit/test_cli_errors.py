"""A CLI command that cannot reach ClickHouse says so in one line naming the setting, not a traceback."""

from __future__ import annotations

import pytest

from cli.main import main
from infra.local.process import free_port


@pytest.mark.parametrize(
    "argv",
    [
        ["metrics"],
        ["metrics", "--by", "minute"],
        ["versions"],
        ["db", "migrate"],
        ["forget", "--user", "u", "--dry-run"],
    ],
)
def test_a_command_without_clickhouse_names_the_url_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("RFTLOOP_CLICKHOUSE_URL", url)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"rftloop: cannot reach ClickHouse at {url} (RFTLOOP_CLICKHOUSE_URL)")
    assert "Traceback" not in err
