"""What the CLI's help says about a default is the default the command uses."""

from __future__ import annotations

import pytest

from cli.main import build_parser
from consumers.clickhouse_sink.sink import DEFAULT_BATCH


def test_the_sink_help_names_the_sinks_default_batch(capsys: pytest.CaptureFixture[str]) -> None:
    # the help is written out (the CLI imports the sink lazily); this keeps it from going stale
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sink", "--help"])
    assert f"(default {DEFAULT_BATCH:,})" in " ".join(capsys.readouterr().out.split())
