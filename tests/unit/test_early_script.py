"""The page's early script goes first into the page's <head> and nowhere else (modules/ui/early_script.py),
through real Starlette responses."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from modules.ui.early_script import FRAMES_JS, EarlyScript

PAGE = "<!doctype html><html><head><meta charset='utf-8'><script type='module' src='/app.js'></script></head>" \
       "<body>é</body></html>"


def client() -> TestClient:
    async def page(request):
        return HTMLResponse(PAGE)

    async def config(request):
        return JSONResponse({"head": "<head>"})

    app = Starlette(routes=[Route("/", page), Route("/config", config), Route("/other", page)])
    return TestClient(EarlyScript(app))


def test_the_script_is_the_first_thing_in_the_pages_head():
    response = client().get("/?__theme=light")
    tag = f"<script>{FRAMES_JS}</script>"
    assert response.text == PAGE.replace("<head>", "<head>" + tag, 1)
    assert response.text.index(tag) < response.text.index("type='module'")  # before Gradio's modules
    assert int(response.headers["content-length"]) == len(response.content)
    assert "statustracker" in FRAMES_JS


def test_other_responses_pass_untouched():
    web = client()
    assert web.get("/config").json() == {"head": "<head>"}
    assert web.get("/other").text == PAGE
    assert web.post("/").status_code == 405  # only the page itself is rewritten
