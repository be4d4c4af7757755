"""OpenAI-style errors: every failure the server reports is `{"error": {message, type, param, code}}`
with a 4xx status for the client's mistakes, so OpenAI clients show the message instead of a
generic failure."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

log = logging.getLogger("tattletale.server")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 503: "service_unavailable"}


class APIError(Exception):
    """A request the server answers with an error body instead of a result."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(error_body(err.message, err.type, err.param, err.code), err.status,
                        headers=headers)


def _loc(loc: tuple) -> str:
    """A pydantic error location as the request's parameter path ("messages[0].content")."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("str", "list", "none") or "[" in str(part) or "-" in str(part):
            continue  # the union branch pydantic tried, not a field of the request
        else:
            path += f".{part}" if path else str(part)
    return path


def validation_error(exc: ValidationError | RequestValidationError) -> APIError:
    """One problem of a body that failed validation, as one readable message. A wrong value is
    told before a missing or unknown field, and both before a wrong type: of a union's branches
    (`stop`: a string or a list), the one of the input's type explains best what is wrong."""

    def rank(e: dict) -> int:
        return 2 if e["type"].endswith("_type") else 1 if e["type"] in ("extra_forbidden", "missing") else 0

    first = min(exc.errors(), key=rank)
    kind, loc, msg = first["type"], tuple(first.get("loc") or ()), first["msg"]
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    param = _loc(loc) or None
    if kind == "json_invalid":
        return APIError(400, f"The body is not valid JSON: {first.get('ctx', {}).get('error', msg)}",
                        code="invalid_json")
    if kind == "model_type" and not loc:
        return APIError(400, "The body must be a JSON object", code="invalid_json")
    if kind == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param,
                        "unknown_parameter")
    if kind == "missing":
        return APIError(400, f"Missing required parameter: {param}", param, "missing_required_parameter")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return APIError(400, f"Invalid value for {param}: {msg}" if param else msg, param, "invalid_value")


def install(app: FastAPI) -> None:
    """Error handlers that turn every failure into an OpenAI-style body."""

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"No such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        return error_response(APIError(exc.status_code, message))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(APIError(500, f"Internal server error: {type(exc).__name__}"))
