"""The OpenAI-compatible HTTP app: routes, authentication and lifespan around any engine with the
interface of `tattletale.engine.core.Engine` (runtime.EngineLike).

Bodies are read and validated here rather than by FastAPI's body parameters: the size is capped,
any content type is read as JSON (curl's `-d` sends a form type), and invalid UTF-8, malformed JSON
and schema violations all become OpenAI-style 400s.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from . import completions, errors
from .errors import APIError
from .runtime import EngineLike, Runtime
from .schemas import BODIES, ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest

MAX_BODY_BYTES = 16 * 2**20
M = TypeVar("M", bound=BaseModel)


class _BearerAuth:
    """`Authorization: Bearer KEY` on every path but /health (load balancers probe it without one)."""

    def __init__(self, app: ASGIApp, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(token.strip(), self.key):
                message = ("Incorrect API key provided" if given else
                           "Missing API key: send the header 'Authorization: Bearer KEY'")
                await errors.error_response(APIError(401, message, code="invalid_api_key"))(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _parse(request: Request, model: type[M]) -> M:
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise APIError(413, f"The body is larger than {MAX_BODY_BYTES} bytes", code="body_too_large")
            chunks.append(chunk)
    except ClientDisconnect:
        raise APIError(400, "The client disconnected while sending the body") from None
    try:
        return model.model_validate_json(b"".join(chunks))
    except ValidationError as exc:
        raise errors.validation_error(exc) from None


def _body(model: type[BaseModel]) -> dict:
    """The route's OpenAPI requestBody (bodies are parsed by _parse, so FastAPI cannot infer it)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def create_app(engine: EngineLike | None = None, *, load: Callable[[], EngineLike] | None = None,
               api_key: str | None = None, shutdown_timeout: float = 10.0,
               on_load_error: Callable[[BaseException], None] | None = None) -> FastAPI:
    """The server app for `engine`, or for the engine `load()` returns (called in a thread at
    startup, while /health answers 503). The lifespan starts the engine and shuts it down."""
    runtime = Runtime(engine, load, shutdown_timeout, on_load_error)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime.start()
        yield
        await runtime.stop()

    app = FastAPI(title="tattletale", summary="OpenAI-compatible LLM server", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.runtime = runtime
    errors.install(app)
    if api_key:
        app.add_middleware(_BearerAuth, key=api_key)

    @app.get("/health")
    async def health() -> JSONResponse:
        if runtime.ready and not runtime.stopping:
            return JSONResponse({"status": "ok"})
        status = ("shutting_down" if runtime.stopping else "error" if runtime.load_error else "loading")
        body = {"status": status, **({"error": runtime.load_error} if runtime.load_error else {})}
        return JSONResponse(body, 503)

    def card(engine: EngineLike) -> dict:
        return {"id": engine.model_name, "object": "model", "created": started, "owned_by": "tattletale",
                "max_model_len": engine.max_context}

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [card(runtime.require())]})

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> JSONResponse:
        engine = runtime.require()
        completions.check_model(engine, model)
        return JSONResponse(card(engine))

    @app.post("/v1/chat/completions", openapi_extra=_body(ChatCompletionRequest))
    async def chat(request: Request) -> Response:
        body = await _parse(request, ChatCompletionRequest)
        return await completions.chat_completion(runtime, body, request.receive)

    @app.post("/v1/completions", openapi_extra=_body(CompletionRequest))
    async def completion(request: Request) -> Response:
        body = await _parse(request, CompletionRequest)
        return await completions.completion(runtime, body, request.receive)

    @app.post("/tokenize", openapi_extra=_body(TokenizeRequest))
    async def tokenize(request: Request) -> JSONResponse:
        body = await _parse(request, TokenizeRequest)
        engine = runtime.require()
        completions.check_model(engine, body.model)
        if body.messages is not None:
            ids = await completions.render(engine, completions.template_messages(body.messages))
        else:
            ids = await asyncio.to_thread(engine.tokenizer.encode, body.prompt, body.add_special_tokens)
        return JSONResponse({"count": len(ids), "max_model_len": engine.max_context, "tokens": ids})

    @app.post("/detokenize", openapi_extra=_body(DetokenizeRequest))
    async def detokenize(request: Request) -> JSONResponse:
        body = await _parse(request, DetokenizeRequest)
        engine = runtime.require()
        completions.check_model(engine, body.model)
        completions.check_vocab(engine, body.tokens, "tokens")
        return JSONResponse({"prompt": await asyncio.to_thread(engine.tokenizer.decode, body.tokens)})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                                 routes=app.routes)
            _, defs = models_json_schema([(m, "validation") for m in BODIES],
                                         ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
