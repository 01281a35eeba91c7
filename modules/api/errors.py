"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right HTTP status.

Every failure under /v1 (bad JSON, a value out of range, a wrong key, a full queue, an unknown route)
answers in this one shape, so OpenAI clients raise their usual exception types with our message.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

#: seconds a 503 (busy, no model yet) tells the client to wait before it retries
RETRY_AFTER_SECONDS = 2
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          422: "invalid_request_error", 503: "server_error"}


class APIError(Exception):
    """An error to send as OpenAI-shaped JSON. `param` names the offending request field."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error" if status >= 500
                                                                 else "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def _param(loc: tuple[Any, ...]) -> str:
    """`("body", "messages", 0, "role")` -> `"messages.0.role"`: the field as the client named it."""
    # pydantic adds the union member it tried ("str", "list[str]", "function-after[...]") to the path:
    # not part of the client's field name
    parts = [str(p) for p in loc if p != "body" and not _is_type_tag(p)]
    return ".".join(parts) or "body"


def _is_type_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "list", "dict", "none"})


def describe_validation(errors: list[dict[str, Any]]) -> tuple[str, str | None, str]:
    """One message naming every bad field, the first field (OpenAI's `param`), and an error code."""
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (detail.get("ctx") or {}).get("error", "")
        return f"the request body is not valid JSON{': ' + reason if reason else ''}", None, "invalid_json"
    parts, first = [], None
    for item in errors:
        param = _param(tuple(item.get("loc", ())))
        first = first or param
        parts.append(f"{param}: {item.get('msg', 'invalid value')}")
    return "invalid request: " + "; ".join(parts), first, "invalid_value"


def install_handlers(api: FastAPI) -> None:
    """Route every error of this FastAPI app through `error_response`."""

    @api.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = describe_validation(list(exc.errors()))
        return error_response(400, message, param, code)

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such route: {request.method} {request.url.path}"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))
