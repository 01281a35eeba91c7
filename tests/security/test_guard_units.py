"""The request guards on their own (fast, no server): what counts as this server's origin, and the
edge cases of each guard. The black-box tests in this folder check the same rules on a real server."""

from __future__ import annotations

import asyncio
import json

import pytest

from modules.api.security import ApiGuard, BodyLimit, GradioSessions, SameOriginOnly, origin_key, same_origin


async def _echo(scope, receive, send):
    data = b""
    while True:
        message = await receive()
        data += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"access-control-allow-origin", b"x"), (b"access-control-allow-credentials", b"true")]})
    await send({"type": "http.response.body", "body": data})


def call(app, path="/", method="GET", headers=(), body=b"", query=b""):
    sent = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "root_path": "", "method": method, "query_string": query,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("origin, host, same", [
    ("http://127.0.0.1:7860", "127.0.0.1:7860", True),
    ("HTTP://LocalHost:7860", "localhost:7860", True),
    ("https://chat.example", "chat.example", True),  # a TLS proxy that keeps Host: default ports
    ("http://chat.example", "chat.example:80", True),
    ("http://[::1]:7860", "[::1]:7860", True),
    ("http://127.0.0.1:7861", "127.0.0.1:7860", False),  # another port: another origin
    ("http://localhost:7860", "127.0.0.1:7860", False),  # another host name, same machine
    ("http://127.0.0.1:7860.evil.test", "127.0.0.1:7860", False),
    ("http://evil.test#@127.0.0.1:7860", "127.0.0.1:7860", False),
    ("null", "127.0.0.1:7860", False),
    ("file://", "127.0.0.1:7860", False),
    ("http://127.0.0.1:99999", "127.0.0.1:99999", False),  # not a port
    ("http://127.0.0.1:7860", None, False),
    ("http://127.0.0.1:7860/path", "127.0.0.1:7860", False),  # not an origin
])
def test_same_origin(origin, host, same):
    assert same_origin(origin, host) is same


def test_origin_key_normalises():
    assert origin_key("HTTPS://Example.COM") == ("https", "example.com", 443)
    assert origin_key("chrome-extension://abc") is None


def test_same_origin_only_strips_credentials_for_listed_origins():
    guard = SameOriginOnly(_echo, allowed=["http://app.example:3000"])
    status, headers, _ = call(guard, headers=[("Host", "127.0.0.1:7860"), ("Origin", "http://app.example:3000")])
    assert status == 200 and b"access-control-allow-credentials" not in headers
    status, headers, _ = call(guard, headers=[("Host", "127.0.0.1:7860"), ("Origin", "http://127.0.0.1:7860")])
    assert status == 200 and headers[b"access-control-allow-credentials"] == b"true"  # own pages: untouched
    assert call(guard, headers=[("Host", "127.0.0.1:7860"), ("Origin", "http://app.example:3001")])[0] == 403


def test_websocket_from_another_origin_is_closed():
    sent = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [(b"host", b"127.0.0.1:7860"),
                                                            (b"origin", b"http://127.0.0.1:9999")]}
    asyncio.run(SameOriginOnly(_echo)(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_body_limit_for_ui_routes_and_uploads():
    limit = BodyLimit(_echo, max_body_bytes=100, max_upload_bytes=1000)
    assert call(limit, "/gradio_api/queue/join", "POST", [("Content-Length", "101")], b"x" * 101)[0] == 413
    assert call(limit, "/gradio_api/queue/join", "POST", body=b"x" * 101)[0] == 413  # no length: counted
    assert call(limit, "/gradio_api/upload", "POST", body=b"x" * 500)[0] == 200  # uploads: their own limit
    assert call(limit, "/v1/chat/completions", "POST", body=b"x" * 500)[0] == 200  # /v1 bounds itself


def test_api_guard_json_only_and_size_first():
    guard = ApiGuard(_echo, api_key=None, admin_key=None, max_body_bytes=100)
    assert call(guard, "/chat/completions", "POST", [("Content-Type", "text/plain")], b"{}")[0] == 415
    assert call(guard, "/chat/completions", "POST", [("Content-Type", "application/json")], b"{}")[0] == 200
    assert call(guard, "/chat/completions", "POST", [("Content-Type", "application/merge-patch+json")], b"{}")[0] == 200
    assert call(guard, "/chat/completions", "POST", [("Content-Length", "1000")], b"x" * 1000)[0] == 413
    assert call(guard, "/internal/model/unload", "POST")[0] == 200  # no body, no type: curl -X POST
    assert call(guard, "/models", "GET", [("Content-Type", "text/plain")])[0] == 200  # reads are not writes


def test_gradio_sessions_bind_to_the_first_login():
    logins = {"a": "ann", "b": "bob"}
    guard = GradioSessions(_echo, login_of=lambda scope: logins.get(dict(scope["headers"]).get(b"cookie", b"").decode()),
                           max_body_bytes=10_000)
    join = json.dumps({"session_hash": "s1", "fn_index": 0, "data": []}).encode()
    assert call(guard, "/gradio_api/queue/join", "POST", [("Cookie", "a")], join)[0] == 200
    assert call(guard, "/gradio_api/queue/join", "POST", [("Cookie", "b")], join)[0] == 403
    assert call(guard, "/gradio_api/queue/data", query=b"session_hash=s1", headers=[("Cookie", "b")])[0] == 403
    assert call(guard, "/gradio_api/heartbeat/s1", headers=[("Cookie", "b")])[0] == 403
    assert call(guard, "/gradio_api/queue/data", query=b"session_hash=s1", headers=[("Cookie", "a")])[0] == 200
    # the app still gets the whole body after the guard read it
    status, _, body = call(guard, "/gradio_api/queue/join", "POST", [("Cookie", "a")], join)
    assert status == 200 and body == join
    assert call(guard, "/gradio_api/deep_link", query=b"session_hash=s1", headers=[("Cookie", "a")])[0] == 404
    assert call(guard, "/", query=b"deep_link=abc")[0] == 404
    # without --auth there is nobody to bind to: only deep links are refused
    open_guard = GradioSessions(_echo, login_of=None, max_body_bytes=10_000)
    assert call(open_guard, "/gradio_api/queue/join", "POST", body=join)[0] == 200
    assert call(open_guard, "/gradio_api/deep_link")[0] == 404


def test_starting_a_call_is_not_claiming_it():
    """POST /gradio_api/call/v2/NAME starts an event for whoever calls it; only its results (GET) are bound."""
    logins = {"a": "ann", "b": "bob"}
    guard = GradioSessions(_echo, login_of=lambda scope: logins.get(dict(scope["headers"]).get(b"cookie", b"").decode()),
                           max_body_bytes=10_000)
    for cookie in ("a", "b"):
        assert call(guard, "/gradio_api/call/v2/chat_send", "POST", [("Cookie", cookie)], b'{"data": []}')[0] == 200
    assert call(guard, "/gradio_api/call/chat_send/e1", headers=[("Cookie", "a")])[0] == 200
    assert call(guard, "/gradio_api/call/chat_send/e1", headers=[("Cookie", "b")])[0] == 403
