"""The training step's precision (RFTLOOP_TRAINER_PRECISION): what auto picks, and that TRL gets it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from consumers.trainer.steps import common_args, describe_precision, training_precision
from infra.settings import TrainerSettings


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def with_caps(**caps: bool) -> None:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"architecture": "x86_64", **caps})

    return with_caps


def test_auto_trains_in_bf16_only_where_the_cpu_multiplies_bf16_natively(cpu_only: Any) -> None:
    cpu_only(avx512_bf16=True, amx_bf16=False)
    assert training_precision("auto") == (True, "auto: the CPU has avx512_bf16")
    assert describe_precision("auto") == "bf16 mixed precision (auto: the CPU has avx512_bf16)"
    cpu_only(avx512_bf16=False, amx_bf16=True)
    assert training_precision("auto") == (True, "auto: the CPU has amx_bf16")
    cpu_only(avx512_bf16=False, avx2=True)
    bf16, why = training_precision("auto")
    assert not bf16 and "no native bf16" in why


def test_an_explicit_precision_wins_over_the_hardware(cpu_only: Any) -> None:
    cpu_only(avx512_bf16=True)
    assert training_precision("fp32") == (False, "RFTLOOP_TRAINER_PRECISION=fp32")
    cpu_only()
    assert training_precision("bf16") == (True, "RFTLOOP_TRAINER_PRECISION=bf16")


def test_trl_gets_the_chosen_precision(cpu_only: Any, tmp_path: Path) -> None:
    cpu_only(avx512_bf16=True)
    assert common_args(TrainerSettings(), tmp_path)["bf16"] is True
    assert common_args(TrainerSettings(precision="fp32"), tmp_path)["bf16"] is False


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision"):
        TrainerSettings(precision="fp16")  # type: ignore[arg-type]
