"""Adapter artifacts: where LoRA adapters live and how their integrity is checked.

An adapter is a directory (peft's ``adapter_config.json`` + weights) under the
artifact root. Its sha256 covers every file's relative path and bytes, in
sorted order, so a changed, added or removed file changes it. The trainer
writes it into ModelVersionPublished; the gateway loads an adapter only when it
lies inside the configured root and its sha256 matches the event.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from pathlib import Path
from urllib.parse import urlparse


class AdapterRefused(ValueError):
    """The adapter is outside the artifact root, missing, its sha256 does not match, or it targets
    modules the serving engine applies no LoRA to."""


def check_targets(path: Path, allowed: Collection[str]) -> None:
    """Refuse an adapter that targets modules outside ``allowed`` (the engine's
    ``--lora-target-modules``): vLLM would load it and leave those weights out, serving a model that
    is not the one trained. Empty ``allowed``: every module is served."""
    if not allowed:
        return
    config = json.loads((path / "adapter_config.json").read_text())
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        raise AdapterRefused(
            f"{path}: target_modules is a pattern ({targets!r}); this gateway serves LoRA on "
            f"{', '.join(sorted(allowed))} only (RFTLOOP_GATEWAY_LORA_TARGET_MODULES; empty serves every module)"
        )
    outside = sorted(set(targets) - set(allowed))
    if outside:
        raise AdapterRefused(
            f"{path}: targets {', '.join(outside)}, which this gateway applies no LoRA to "
            f"(RFTLOOP_GATEWAY_LORA_TARGET_MODULES={','.join(allowed)}; add them, or empty serves every module)"
        )


def adapter_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise AdapterRefused(f"{path}: no files")
    for f in files:
        digest.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def resolve_uri(uri: str, root: Path, targets: Collection[str] = ()) -> Path:
    """``file:///…`` or a plain path -> a directory inside ``root`` (anything else is refused),
    whose adapter targets only ``targets`` (``check_targets``)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise AdapterRefused(f"{uri}: only file:// adapter URIs are served")
    path = Path(parsed.path if parsed.scheme else uri)
    real, real_root = path.resolve(), root.resolve()
    if real != real_root and real_root not in real.parents:
        raise AdapterRefused(f"{uri}: outside the artifact root {real_root} (RFTLOOP_GATEWAY_ADAPTER_ROOT)")
    if not (real / "adapter_config.json").is_file():
        raise AdapterRefused(f"{uri}: no adapter_config.json there")
    check_targets(real, targets)
    return real


def verify(uri: str, expected_sha256: str | None, root: Path, targets: Collection[str] = ()) -> Path:
    path = resolve_uri(uri, root, targets)
    if not expected_sha256:
        raise AdapterRefused(f"{uri}: the event carries no sha256; refusing an unverifiable adapter")
    actual = adapter_sha256(path)
    if actual != expected_sha256:
        raise AdapterRefused(
            f"{uri}: sha256 {actual[:12]}… does not match the event's {expected_sha256[:12]}…"
        )
    return path
