"""The evaluators' own process (streams/evaluator_sandbox.py): a user's evaluator that hangs or
kills its interpreter costs its response a deadline and a restart; every other response, and every
other evaluator on that response, is still scored, and the runner serves the next batch."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

from infra import rewards
from streams.evaluator_sandbox import EvaluatorSandbox, EvaluatorStartFailed

USER_MODULE = """
import os
import time

from infra.rewards import evaluator


@evaluator("hangs_on_loop")
def hangs(item):
    if "loop" in item.completion:
        while True:
            time.sleep(1)
    return 1.0


@evaluator("dies_on_exit")
def dies(item):
    if "exit" in item.completion:
        os._exit(3)
    return 0.5
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"user_evaluators_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))  # the spawned child gets the parent's sys.path
    return name


def _item(completion: str) -> rewards.EvalInput:
    return rewards.EvalInput(prompt="1+1?", completion=completion, reference="2")


def test_a_hanging_or_dying_evaluator_costs_only_its_own_score(user_module: str) -> None:
    sandbox = EvaluatorSandbox(
        ["number_match", "hangs_on_loop", "dies_on_exit"], [user_module], timeout_s=1.0
    )
    try:
        started = time.monotonic()
        out = sandbox.run([_item("2"), _item("2 loop"), _item("3"), _item("2 exit"), _item("2")])
        took = time.monotonic() - started
        fine = {"number_match": 1.0, "hangs_on_loop": 1.0, "dies_on_exit": 0.5}
        assert [o.scores for o in out] == [
            fine,
            {"number_match": 1.0, "dies_on_exit": 0.5},  # the hanging one alone is missing
            {"number_match": 0.0, "hangs_on_loop": 1.0, "dies_on_exit": 0.5},
            {"number_match": 1.0, "hangs_on_loop": 1.0},
            fine,  # after two restarts, the rest of the batch in the new process
        ]
        assert [o.timed_out for o in out] == [[], ["hangs_on_loop"], [], ["dies_on_exit"], []]
        # the loop: its batch deadline, then again alone; the exit is seen at once (EOF)
        assert sandbox.restarts == 4 and took < 30
        assert sandbox.run([_item("2")])[0].scores == fine  # and it serves the next batch
    finally:
        sandbox.close()


def test_an_evaluator_module_that_fails_stops_the_start_with_its_cause(user_module: str) -> None:
    with pytest.raises(EvaluatorStartFailed, match="no_such_module"):
        EvaluatorSandbox(["number_match"], ["no_such_module"], timeout_s=1.0).start()
    with pytest.raises(EvaluatorStartFailed, match="RFTLOOP_STREAMS_EVALUATOR_MODULES"):
        EvaluatorSandbox(["not_registered"], [user_module], timeout_s=1.0).start()
    assert sys.modules.get(user_module) is None  # user code ran in the child, not in this process
