"""ASGI guards for the whole server (Gradio's routes and /v1 alike) and for /v1 alone.

- `LocalHostOnly`: on a 127.0.0.1 bind, only loopback Host names (DNS rebinding).
- `SameOriginOnly`: a browser may send requests only from this server's own pages (or an origin
  named in --cors-origin). Any other `Origin`, or `Sec-Fetch-Site: cross-site` / `same-site` on a
  request that is not a plain link click, is a 403 before any handler runs — whatever Gradio's own
  CORS layer would have allowed (it answers every localhost origin, and with --listen every origin,
  with `Access-Control-Allow-Credentials: true`). That header never reaches a foreign origin.
- `BodyLimit`: every request body is bounded (--max-body-bytes; Gradio's upload route: --max-upload-mb),
  by Content-Length before anything is read and while reading otherwise.
- `GradioSessions`: Gradio's deep links are off; with --auth, a Gradio session id (`session_hash`) and
  an event id belong to the login that first used them, so one login cannot join, read or cancel
  another login's session even when its id is known (ids appear in URLs).
- `ApiGuard` (/v1 only): the API key (or the admin key for model management), and state-changing
  requests only with `application/json` bodies, so a no-preflight form or text/plain POST from a web
  page never reaches a route.

They are plain ASGI middleware, not `BaseHTTPMiddleware`, so streaming responses pass through
untouched and a client's disconnect still reaches the route (which cancels its generation).
"""

from __future__ import annotations

import hmac
import json
import re
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import parse_qs, urlsplit

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
UPLOAD_PATH = "/gradio_api/upload"
UPLOAD_SLACK_BYTES = 1024 * 1024  # multipart headers and boundaries around the file itself
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


async def _send_error(send: Send, status: int, message: str, code: str,
                      headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


async def _refuse(scope: Scope, send: Send, status: int, message: str, code: str) -> None:
    """The refusal in the request's own protocol: a JSON error, or a closed websocket (policy violation)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
    else:
        await _send_error(send, status, message, code)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _path(scope: Scope) -> str:
    """The path inside the app that received the request (a mounted sub-app's root_path removed)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


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
                await _refuse(scope, send, 403, f"Host {host!r} is not allowed: this server is bound to 127.0.0.1 "
                              "and answers only localhost, 127.0.0.1 and [::1] (use --listen to serve others)",
                              "host_not_allowed")
                return
        await self.app(scope, receive, send)


# -- origins ----------------------------------------------------------------------------------------
def origin_key(origin: str) -> tuple[str, str, int] | None:
    """`"HTTP://LocalHost:7860"` -> `("http", "localhost", 7860)`; None for anything that is not an origin
    (`null`, a path, a bad port)."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        return None
    return parts.scheme, parts.hostname, port or _DEFAULT_PORTS[parts.scheme]


def same_origin(origin: str, host_header: str | None) -> bool:
    """Whether a browser's `Origin` is this server as the request addressed it (its Host header)."""
    key = origin_key(origin)
    if key is None or not host_header:
        return False
    try:
        host = urlsplit("//" + host_header.strip().lower())
        port = host.port
    except ValueError:
        return False
    return host.hostname == key[1] and (port or _DEFAULT_PORTS[key[0]]) == key[2]


class SameOriginOnly:
    """Refuse requests a browser sends on behalf of another origin; see the module docstring.

    `allowed` are the extra origins of --cors-origin: a proxy's public origin (when it rewrites Host),
    or a web app allowed to call /v1 (whose CORS headers the /v1 app adds). A request without `Origin`
    and without `Sec-Fetch-Site` (curl, the openai package, gradio_client) is not a browser's and passes.
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = {key for key in (origin_key(o) for o in allowed) if key is not None}

    def _refusal(self, scope: Scope, origin: str | None) -> str | None:
        if origin is not None:
            if same_origin(origin, _header(scope, b"host")) or origin_key(origin) in self.allowed:
                return None
            return (f"cross-origin request refused: Origin {origin[:200]!r} is not this server; pages of other "
                    "origins may not use it (name an origin in --cors-origin to allow it)")
        site = (_header(scope, b"sec-fetch-site") or "").lower()
        if site not in ("cross-site", "same-site"):
            return None
        mode = (_header(scope, b"sec-fetch-mode") or "").lower()
        if scope["type"] == "http" and mode == "navigate" and scope.get("method") in ("GET", "HEAD"):
            return None  # following a link to the UI: the page that linked cannot read the answer
        return f"cross-site request refused (Sec-Fetch-Site: {site}): only this server's own pages may use it"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        refusal = self._refusal(scope, origin)
        if refusal:
            await _refuse(scope, send, 403, refusal, "cross_origin_refused")
            return
        if origin is None or same_origin(origin, _header(scope, b"host")):
            await self.app(scope, receive, send)
            return

        async def no_credentials(message: Message) -> None:
            # A listed origin may send requests and read public answers, never with the user's cookies.
            if message["type"] == "http.response.start":
                message = {**message, "headers": [(k, v) for k, v in message.get("headers", ())
                                                  if k.lower() != b"access-control-allow-credentials"]}
            await send(message)

        await self.app(scope, receive, no_credentials)


# -- bodies -----------------------------------------------------------------------------------------
class _TooLarge(HTTPException):
    """Raised from `receive` mid-body; an HTTPException so FastAPI's body reader passes it on as is."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


async def bounded_call(app: ASGIApp, scope: Scope, receive: Receive, send: Send, limit: int, message: str) -> None:
    """Run `app` with a body of at most `limit` bytes: 413 with `message` for a longer one, refused on its
    Content-Length before anything is read, or as soon as the bytes received pass the limit."""
    length = _header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        await _send_error(send, 413, message, "body_too_large")
        return
    received = 0
    started = False

    async def bounded_receive() -> Message:
        nonlocal received
        event = await receive()
        if event["type"] == "http.request":
            received += len(event.get("body", b""))
            if received > limit:
                raise _TooLarge(message)
        return event

    async def tracking_send(event: Message) -> None:
        nonlocal started
        started = started or event["type"] == "http.response.start"
        await send(event)

    try:
        await app(scope, bounded_receive, tracking_send)
    except _TooLarge:
        if not started:
            await _send_error(send, 413, message, "body_too_large")


class BodyLimit:
    """Bounded request bodies for the routes outside /v1 (the UI's events, logins, uploads)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int, skip: str = "/v1") -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.skip = skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path == self.skip or path.startswith(self.skip + "/"):
            await self.app(scope, receive, send)  # /v1 bounds its own bodies, with its own message
            return
        if path.rstrip("/") == UPLOAD_PATH:
            limit = self.max_upload_bytes + UPLOAD_SLACK_BYTES
            message = f"the upload is larger than {self.max_upload_bytes:,} bytes (--max-upload-mb)"
        else:
            limit, message = self.max_body_bytes, f"the request body is larger than {self.max_body_bytes:,} bytes " \
                                                  "(--max-body-bytes)"
        await bounded_call(self.app, scope, receive, send, limit, message)


# -- Gradio sessions ------------------------------------------------------------------------------
DEEP_LINK_PATH = "/gradio_api/deep_link"
#: Gradio routes that name a session (or an event) in the path
_SESSION_IN_PATH = re.compile(r"^/gradio_api/(?:heartbeat|stream)/([^/]+)")
_EVENT_IN_PATH = re.compile(r"^/gradio_api/call/(?:v2/)?[^/]+/([^/]+)$")
#: POST routes whose JSON body names the session
_SESSION_IN_BODY = re.compile(r"^/gradio_api/(?:queue/join|cancel|call/.+|run/.+)$")
MAX_OWNED_IDS = 100_000


class GradioSessions:
    """Deep links off; with --auth, Gradio's session and event ids bound to the login that first used them.

    `login_of(scope)` reads the login from the request's Gradio cookie (None: not logged in). Without
    --auth it is None and only the deep-link rule applies (there is one user). The id -> login table is
    bounded (oldest forgotten first); a forgotten id is bound again by its next use.
    """

    def __init__(self, app: ASGIApp, login_of: Callable[[Scope], str | None] | None, max_body_bytes: int) -> None:
        self.app = app
        self.login_of = login_of
        self.max_body_bytes = max_body_bytes
        self.owners: OrderedDict[str, str] = OrderedDict()

    def _claim(self, key: str, login: str) -> bool:
        owner = self.owners.get(key)
        if owner is None:
            self.owners[key] = login
            while len(self.owners) > MAX_OWNED_IDS:
                self.owners.popitem(last=False)
            return True
        self.owners.move_to_end(key)
        return hmac.compare_digest(owner.encode(), login.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if path.rstrip("/") == DEEP_LINK_PATH or query.get("deep_link", [""])[0]:
            await _send_error(send, 404, "deep links are turned off in Parlour: they would hand one login's open "
                              "chat to anyone holding the link", "deep_links_off")
            return
        login = self.login_of(scope) if self.login_of is not None else None
        if login is None:  # no --auth, or not logged in (Gradio's own login check answers that)
            await self.app(scope, receive, send)
            return
        keys = list(query.get("session_hash", []))
        match = _SESSION_IN_PATH.match(path)
        if match:
            keys.append(match.group(1))
        match = _EVENT_IN_PATH.match(path) if scope.get("method") == "GET" else None  # POST call/NAME starts one
        if match:
            keys.append("event:" + match.group(1))
        if scope.get("method") == "POST" and _SESSION_IN_BODY.match(path):
            body, receive = await _read_body(receive, self.max_body_bytes)
            try:
                data = json.loads(body) if body else {}
            except ValueError:
                data = {}
            if isinstance(data, dict) and isinstance(data.get("session_hash"), str):
                keys.append(data["session_hash"])
        if not all(self._claim(key, login) for key in keys):
            await _send_error(send, 403, "this Gradio session belongs to another login", "session_not_yours")
            return
        if scope.get("method") == "POST" and path.startswith("/gradio_api/call/"):
            send = self._claiming_event(send, login)
        await self.app(scope, receive, send)

    def _claiming_event(self, send: Send, login: str) -> Send:
        """POST /gradio_api/call/NAME answers {"event_id": ...}: that event's results are this login's."""
        chunks: list[bytes] = []

        async def claiming(message: Message) -> None:
            if message["type"] == "http.response.body" and sum(map(len, chunks)) < 4096:
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    try:
                        event = json.loads(b"".join(chunks)).get("event_id")
                    except (ValueError, AttributeError):
                        event = None
                    if isinstance(event, str):
                        self._claim("event:" + event, login)
            await send(message)

        return claiming


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, Receive]:
    """The whole request body (at most `limit` bytes; BodyLimit refused larger ones already), and a
    `receive` that hands the same body to the app."""
    chunks, size = [], 0
    while True:
        event = await receive()
        if event["type"] != "http.request":
            break
        chunks.append(event.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            raise _TooLarge(f"the request body is larger than {limit:,} bytes (--max-body-bytes)")
        if not event.get("more_body"):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


# -- /v1 --------------------------------------------------------------------------------------------
def _key_matches(given: str | None, key: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), key.encode())


def _json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class ApiGuard:
    """Every /v1 request: the API key (or the admin key for model management), a JSON body for requests
    that change something, then a bounded body."""

    def __init__(self, app: ASGIApp, api_key: str | None, admin_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.admin_key = admin_key
        self.max_body_bytes = max_body_bytes

    def _refusal(self, scope: Scope) -> str | None:
        auth = _header(scope, b"authorization") or ""
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        path = _path(scope)
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

    @staticmethod
    def _not_json(scope: Scope) -> str | None:
        """A state-changing request whose body is not JSON: what a web page can send without a preflight
        (form posts, text/plain) never reaches a route, even with no key set."""
        if scope.get("method") not in ("POST", "PUT", "PATCH", "DELETE"):
            return None
        content_type = _header(scope, b"content-type")
        if content_type is not None:
            return None if _json_type(content_type) else (
                f"the body must be JSON (Content-Type: application/json), not {content_type.split(';')[0]!r}")
        length = _header(scope, b"content-length")
        chunked = "chunked" in (_header(scope, b"transfer-encoding") or "").lower()
        if chunked or (length is not None and length.strip() not in ("", "0")):
            return "the body must be JSON (Content-Type: application/json)"
        return None  # no body at all (curl -X POST .../model/unload)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal:
            await _send_error(send, 401, refusal, "invalid_api_key", [(b"www-authenticate", b"Bearer")])
            return
        too_large = f"the request body is larger than {self.max_body_bytes:,} bytes (--max-body-bytes)"
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await _send_error(send, 413, too_large, "body_too_large")  # before its type: the size is the problem
            return
        wrong_type = self._not_json(scope)
        if wrong_type:
            await _send_error(send, 415, wrong_type, "unsupported_media_type")
            return
        await bounded_call(self.app, scope, receive, send, self.max_body_bytes, too_large)
