"""A pass-through HTTP proxy in front of `vllm serve`: the other gateway design issue 19 names (stock
vLLM behind a router), measured by `rftloop bench gateway` beside the in-process gateway.

It forwards each request and streams the response back unchanged, and does nothing else: no
routing, auth, events or SSE parsing. That makes it a lower bound on that design's cost: the extra
HTTP hop and process on the same cores. A real router would also parse the stream for events.

Hand-written (about 40 lines) because the measurement needs exactly this hop and nothing more;
a production proxy (Envoy, nginx) is not installable here.
"""

from __future__ import annotations

import argparse
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route


def app(upstream: str) -> Starlette:
    client = httpx.AsyncClient(base_url=upstream, timeout=600, limits=httpx.Limits(max_connections=256))

    async def forward(request: Request) -> Any:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        req = client.build_request(
            request.method, request.url.path, content=await request.body(), headers=headers
        )
        resp = await client.send(req, stream=True)

        async def body() -> Any:
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            finally:
                await resp.aclose()

        kept = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type", "x-request-id")}
        return StreamingResponse(body(), status_code=resp.status_code, headers=kept)

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    uvicorn.run(app(args.upstream), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
