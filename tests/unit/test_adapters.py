"""Which adapters a gateway serves (infra/adapters.py): inside its root, intact, and only on the
modules its engine applies LoRA to (RFTLOOP_GATEWAY_LORA_TARGET_MODULES)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumers.trainer.steps import LORA_TARGETS
from infra import adapters
from infra.settings import GatewaySettings


def _adapter(root: Path, name: str, targets: list[str] | str) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": 16, "target_modules": targets}))
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    return path


def test_an_adapter_on_modules_the_engine_does_not_wrap_is_refused_naming_them(tmp_path: Path) -> None:
    allowed = GatewaySettings().lora_targets()
    ok = _adapter(tmp_path, "attn", ["v_proj", "q_proj"])
    assert adapters.resolve_uri(f"file://{ok}", tmp_path, allowed) == ok.resolve()
    mlp = _adapter(tmp_path, "mlp", ["q_proj", "gate_proj", "down_proj"])
    with pytest.raises(
        adapters.AdapterRefused, match=r"targets down_proj, gate_proj.*RFTLOOP_GATEWAY_LORA_TARGET_MODULES"
    ):
        adapters.verify(str(mlp), adapters.adapter_sha256(mlp), tmp_path, allowed)
    pattern = _adapter(tmp_path, "all", "all-linear")
    with pytest.raises(adapters.AdapterRefused, match="pattern"):
        adapters.resolve_uri(str(pattern), tmp_path, allowed)
    # an engine that wraps every module serves them all
    assert adapters.resolve_uri(str(mlp), tmp_path, []) == mlp.resolve()


def test_the_trainers_adapters_fit_the_default_gateway_and_the_flag_reaches_vllm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from producers.gateway.serving import Serving

    assert set(LORA_TARGETS) <= set(GatewaySettings().lora_targets())
    argv = Serving("/m", GatewaySettings()).argv()
    i = argv.index("--lora-target-modules")
    assert argv[i + 1 : i + 5] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    monkeypatch.setenv("RFTLOOP_GATEWAY_LORA_TARGET_MODULES", "")
    assert "--lora-target-modules" not in Serving("/m", GatewaySettings()).argv()
