"""ASGI guards: the Host check (DNS rebinding) for the whole server, and key + body-size checks for /v1.

They are plain ASGI middleware, not `BaseHTTPMiddleware`, so streaming responses pass through
untouched and a client's disconnect still reaches the route (which cancels its generation).
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable

from fastapi import HTTPException

from modules.api.errors import error_body

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
#: routes that manage the process-wide model; they need the admin key when one is set
ADMIN_PATHS = frozenset({"/internal/model/list", "/internal/model/load", "/internal/model/unload"})


async def _send_error(send: Send, status: int, message: str, code: str,
                      headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def host_name(host_header: str) -> str:
    """`"localhost:7860"` -> `"localhost"`, `"[::1]:7860"` -> `"[::1]"` (lower case)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class LocalHostOnly:
    """On a 127.0.0.1 bind, answer only requests whose Host is a loopback name.

    A web page can make the browser send requests to 127.0.0.1 under the attacker's own domain name
    (DNS rebinding); such requests carry that foreign name in Host, so refusing them closes the hole.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = _header(scope, b"host")
            if host is not None and host_name(host) not in LOCAL_HOSTS:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await _send_error(send, 403, f"Host {host!r} is not allowed: this server is bound to 127.0.0.1 "
                                  "and answers only localhost, 127.0.0.1 and [::1] (use --listen to serve others)",
                                  "host_not_allowed")
                return
        await self.app(scope, receive, send)


class _TooLarge(HTTPException):
    """Raised from `receive` mid-body; an HTTPException so FastAPI's body reader passes it on as is."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit:,} bytes (--max-body-bytes)")


def _key_matches(given: str | None, key: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), key.encode())


class ApiGuard:
    """Every /v1 request: the API key (or the admin key for model management), then a bounded body."""

    def __init__(self, app: ASGIApp, api_key: str | None, admin_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.admin_key = admin_key
        self.max_body_bytes = max_body_bytes

    def _refusal(self, scope: Scope) -> str | None:
        auth = _header(scope, b"authorization") or ""
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        path = scope["path"][len(scope.get("root_path", "")):] if scope["path"].startswith(
            scope.get("root_path", "")) else scope["path"]
        if self.admin_key is not None and path.rstrip("/") in ADMIN_PATHS:
            return None if _key_matches(given, self.admin_key) else "this route needs the admin key (Bearer)"
        if self.api_key is None:
            return None
        # Compare against both keys every time, so timing does not tell which one nearly matched.
        ok_api = _key_matches(given, self.api_key)
        ok_admin = self.admin_key is not None and _key_matches(given, self.admin_key)
        if ok_api or ok_admin:
            return None
        return "missing API key (send Authorization: Bearer KEY)" if given is None else "invalid API key"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal:
            await _send_error(send, 401, refusal, "invalid_api_key", [(b"www-authenticate", b"Bearer")])
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await self._too_large(send)
            return
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _TooLarge(self.max_body_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        await _send_error(send, 413, f"the request body is larger than {self.max_body_bytes:,} bytes "
                          "(--max-body-bytes)", "body_too_large")
