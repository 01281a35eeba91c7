"""A script at the very top of the page's <head>, before Gradio's modules run (modules/ui/frames.js).

Gradio adds the Blocks' `head` from its own script once it has started, so what its modules capture at
load (the frame scheduler of its status tracker) is out of reach by then. This ASGI middleware puts the
script into the HTML of the page itself; every other response passes through untouched (plain ASGI, so
streaming responses stay streaming)."""

from __future__ import annotations

from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

FRAMES_JS = Path(__file__).with_name("frames.js").read_text(encoding="utf-8")


class EarlyScript:
    def __init__(self, app: ASGIApp, script: str = FRAMES_JS) -> None:
        self.app = app
        self.tag = f"<script>{script}</script>".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"].rstrip("/") != "":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        body: list[bytes] = []

        async def rewriting(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                html = headers.get(b"content-type", b"").startswith(b"text/html")
                if not html or b"content-encoding" in headers:
                    await send(message)
                    return
                start = message  # held until the whole page is here
                return
            if start is None:
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            page = b"".join(body)
            at = page.find(b"<head>")
            if at >= 0:
                page = page[:at + 6] + self.tag + page[at + 6:]
            headers = [(k, v) for k, v in start.get("headers") or [] if k != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(page)).encode())]})
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, rewriting)
