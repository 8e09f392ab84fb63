"""vLLM's own OpenAI serving layer in the gateway process: chat, completions, LoRA versions.

The gateway used to hand-write a subset of the OpenAI API over ``AsyncLLMEngine`` and silently
dropped what it did not implement (``n``, logprobs, ``response_format``, tools, ``stop``, the
penalties, stream usage). Now every request is served by vLLM's ``OpenAIServingChat`` and
``OpenAIServingCompletion``, built by vLLM's own ``init_app_state`` from vLLM's own argument
parser, exactly as ``vllm serve`` builds them: structured outputs, tool calls, logprobs and ``n``
behave as in stock vLLM, on the CPU engine here and unchanged on a GPU.

Why in-process and not ``vllm serve`` behind a proxy: on a 2-core machine a second HTTP hop and a
second Python process compete with the engine for the same cores, and the gateway needs vLLM's
per-request engine timings (cost is engine time) which it reads from the response objects here
without re-parsing. rftloop's part stays thin: routing, auth, limits, redaction, events, cost.

Each version is a LoRA registered under the model name ``<served_name>:<version>`` in vLLM's
``OpenAIServingModels``, so the ``model`` in every response is the version that served it.
"""

from __future__ import annotations

import os
import time
from contextlib import AsyncExitStack
from typing import Any

from infra import lora_cpu
from infra.settings import GatewaySettings


def on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


class Serving:
    """One vLLM engine and vLLM's OpenAI serving objects over it."""

    def __init__(self, model_path: str, settings: GatewaySettings) -> None:
        self.model_path, self.settings = model_path, settings
        self.cpu = on_cpu()
        if self.cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
            # Measured here: on 2 cores, binding both to compute ran SmolLM2 1.6x faster than vLLM's default.
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{max(0, (os.cpu_count() or 1) - 1)}")
        self._stack = AsyncExitStack()
        self.engine: Any = None
        self.state: Any = None
        self.tokenizer: Any = None
        self.started_s = 0.0
        self.lora_kernels = "vllm"  # "grouped": infra/lora_cpu.py in the worker (CPU)

    def argv(self) -> list[str]:
        """The `vllm serve` command line for this gateway's engine (the benchmark's peer runs it)."""
        s = self.settings
        argv = [
            "--model", self.model_path,
            "--served-model-name", s.served_name,
            "--dtype", "float32" if self.cpu else "auto",
            "--enable-lora",
            "--max-lora-rank", str(s.max_lora_rank),
            "--max-loras", str(s.max_loras),
            "--max-model-len", str(s.max_model_len),
            "--enable-per-request-metrics",  # engine time per request: the cost counts it
            "--enable-auto-tool-choice",
            "--tool-call-parser", s.tool_call_parser,
        ]  # fmt: skip
        if s.lora_targets():  # vLLM wraps only these: no LoRA calls at all for the other projections
            argv += ["--lora-target-modules", *s.lora_targets()]
        if s.compact_json:  # no free whitespace inside JSON: small models otherwise pad it to max_tokens
            argv += ["--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}']
        if self.cpu and lora_cpu.worker_extension():  # grouped LoRA matmuls in the worker (infra/lora_cpu.py)
            argv += ["--worker-extension-cls", lora_cpu.worker_extension()]
        return argv + (["--enforce-eager"] if self.cpu else [])

    def args(self) -> Any:
        """`vllm serve`'s own parsed arguments (one parser, one meaning)."""
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        return make_arg_parser(FlexibleArgumentParser()).parse_args(self.argv())

    async def start(self) -> None:
        from starlette.datastructures import State
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client

        t0 = time.monotonic()
        args = self.args()
        self.engine = await self._stack.enter_async_context(build_async_engine_client(args))
        if self.cpu and lora_cpu.worker_extension():  # what the model's worker really runs
            self.lora_kernels = ",".join(set(await self.engine.collective_rpc("rftloop_lora_kernels")))
        self.state = State()
        await init_app_state(self.engine, self.state, args, await self.engine.get_supported_tasks())
        self.tokenizer = self.engine.renderer.tokenizer
        self.started_s = time.monotonic() - t0

    async def shutdown(self) -> None:
        await self._stack.aclose()

    def model_name(self, version: str) -> str:
        return self.settings.served_name if version == "base" else f"{self.settings.served_name}:{version}"

    async def load_adapter(self, version: str, lora_id: int, path: str) -> None:
        from vllm.lora.request import LoRARequest

        name = self.model_name(version)
        request = LoRARequest(name, lora_id, path)
        if await self.engine.add_lora(request) is False:
            raise RuntimeError(f"vLLM refused adapter {version} at {path}")
        self.state.openai_serving_models.lora_requests[name] = request

    async def unload_adapter(self, version: str, lora_id: int) -> None:
        self.state.openai_serving_models.lora_requests.pop(self.model_name(version), None)
        await self.engine.remove_lora(lora_id)

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    @staticmethod
    def request(body: dict[str, Any], chat: bool) -> Any:
        """vLLM's own request model for ``body`` (pydantic ValidationError when it is invalid)."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        return (ChatCompletionRequest if chat else CompletionRequest).model_validate(body)

    async def serve(self, request: Any, chat: bool) -> Any:
        """vLLM's response: a response object, an ErrorResponse, or an async iterator of SSE lines."""
        if chat:
            return await self.state.openai_serving_chat.create_chat_completion(request, None)
        return await self.state.openai_serving_completion.create_completion(request, None)
