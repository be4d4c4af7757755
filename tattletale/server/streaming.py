"""Server-sent events as OpenAI streams them: one `data: {json}` event per chunk, `data: [DONE]` at
the end, and an `{"error": ...}` event when generation fails after the response has started."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse

DONE = "data: [DONE]\n\n"


def event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    # no-cache and no proxy buffering: each token should reach the client as it is generated
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
