"""A tiny OpenAI-compatible upstream for tests and the benchmark.

POST /v1/chat/completions answers with exactly ``max_tokens`` (or
``max_completion_tokens``) output tokens, as a model cut off at its length
limit, and says which limit it received in the content ("max_tokens=N").
``prompt_tokens`` is counted with LiteLLM's own token counter, as the hook
counts it. A user message containing FAIL gets a 500; SLOW waits 5 s first;
DRIP streams ten pieces 0.3 s apart.
Run: python mock_openai.py PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

import litellm
from aiohttp import web

DEFAULT_TOKENS = 16  # when the request names no limit (the proxy without the hook)


def _prompt_text(body: dict) -> str:
    return " ".join(str(m.get("content", "")) for m in body.get("messages", []))


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    text = _prompt_text(body)
    if "FAIL" in text:
        return web.json_response({"error": {"message": "mock failure", "type": "server_error"}},
                                 status=500)
    if "SLOW" in text:
        await asyncio.sleep(5)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    n = int(limit) if limit else DEFAULT_TOKENS
    model = body.get("model", "mock")
    prompt = litellm.token_counter(model=model, messages=body.get("messages", []))
    usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
    content = f"max_tokens={limit if limit else 'none'}"
    rid, created = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())
    if not body.get("stream"):
        return web.json_response({
            "id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": content}}],
            "usage": usage})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)

    async def send(obj: dict) -> None:
        await resp.write(f"data: {json.dumps(obj)}\n\n".encode())

    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
    drip = "DRIP" in text  # a slow stream: ten pieces, 0.3 s apart
    pieces = [" drip"] * 10 if drip else [content[:11], content[11:]]
    for piece in pieces:
        await send({**base, "choices": [{"index": 0, "finish_reason": None, "delta": {
            "role": "assistant", "content": piece}}]})
        await asyncio.sleep(0.3 if drip else 0.01)
    await send({**base, "choices": [{"index": 0, "finish_reason": "length", "delta": {}}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        await send({**base, "choices": [], "usage": usage})
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "mock-gpt", "object": "model"}]})


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
