"""Other origins cannot use Parlour as the user: a page on another local port (a dev server, a notebook, a
malicious package's page) in the same real browser reads nothing and changes nothing, with and without
--auth, with and without --listen. Gradio's own CORS layer answers every localhost origin (with --listen:
every origin) with `Access-Control-Allow-Credentials: true`; the same-origin guard runs before it.

The header matrix below is what the browser tests rest on, checked directly with httpx."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.reliability.conftest import snapshot
from tests.security.conftest import login_cookies

VARIANTS = {
    "local": [],
    "local-auth": ["--auth", "ann:pw-ann,bob:pw-bob", "--api-key", "key-1"],
    "listen": ["--listen", "--insecure-listen"],
    "listen-auth": ["--listen", "--auth", "ann:pw-ann,bob:pw-bob", "--api-key", "key-1"],
}
LISTEN_HOST = "parlour.test"  # resolved to 127.0.0.1 by the browser below and named in Host by httpx


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, module_server):
    name = request.param
    server = module_server(*VARIANTS[name])
    listen = name.startswith("listen")
    port = server.port
    # the server's own origin as a browser reaches it; with --listen, under a name that is not localhost,
    # where Gradio's CORS layer would echo any origin
    own = f"http://{LISTEN_HOST}:{port}" if listen else f"http://127.0.0.1:{port}"
    return {"name": name, "server": server, "auth": "auth" in name, "own": own,
            "host": f"{LISTEN_HOST}:{port}" if listen else f"127.0.0.1:{port}"}


def get(variant, path, **headers):
    return httpx.get(variant["server"].url + path, headers={"Host": variant["host"], **headers}, timeout=30)


def foreign_origins(variant, other_port):
    port = variant["server"].port
    return [f"http://127.0.0.1:{other_port}", f"http://localhost:{other_port}", "null",
            f"http://evil.test:{port}", f"http://127.0.0.1:{port}.evil.test", "https://evil.test",
            f"http://{LISTEN_HOST}:{port}/" + "x" * 10, f"http://localhost:{port}" if "127.0.0.1" in variant["own"]
            else f"http://127.0.0.1:{port}"]


@pytest.mark.parametrize("path", ["/", "/config", "/gradio_api/info", "/v1/models", "/v1/internal/health", "/health",
                                  "/gradio_api/file=/etc/passwd", "/login_check"])
def test_foreign_origins_get_403_without_credentials(variant, path, other_site):
    other_port = other_site.server_address[1]
    for origin in foreign_origins(variant, other_port):
        response = get(variant, path, Origin=origin)
        assert response.status_code == 403, (origin, response.status_code, response.text[:200])
        assert "cross-origin" in response.json()["error"]["message"]
        assert "access-control-allow-credentials" not in response.headers
        assert "access-control-allow-origin" not in response.headers


def test_own_origin_passes(variant):
    response = get(variant, "/config", Origin=variant["own"])
    assert response.status_code == (401 if variant["auth"] else 200)
    assert get(variant, "/health", Origin=variant["own"]).json()["model"] == "parlour-micro"


@pytest.mark.parametrize("site, mode, dest, method, allowed", [
    ("cross-site", "cors", "empty", "GET", False),
    ("cross-site", "no-cors", "script", "GET", False),
    ("same-site", "no-cors", "image", "GET", False),  # another port of the same host is the same *site*
    ("cross-site", "navigate", "document", "POST", False),
    ("cross-site", "navigate", "document", "GET", True),  # a link to the UI: the linking page reads nothing
    ("same-origin", "cors", "empty", "GET", True),
    ("none", "navigate", "document", "GET", True),  # typed into the address bar
])
def test_sec_fetch_site_without_origin(variant, site, mode, dest, method, allowed):
    headers = {"Host": variant["host"], "Sec-Fetch-Site": site, "Sec-Fetch-Mode": mode, "Sec-Fetch-Dest": dest}
    response = httpx.request(method, variant["server"].url + "/health", headers=headers, timeout=30)
    assert (response.status_code != 403) == allowed, response.text[:200]


def test_preflights_from_foreign_origins_are_refused(variant, other_site):
    origin = f"http://127.0.0.1:{other_site.server_address[1]}"
    for path in ("/gradio_api/queue/join", "/v1/chat/completions", "/gradio_api/upload", "/config"):
        response = httpx.options(variant["server"].url + path, timeout=30, headers={
            "Host": variant["host"], "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert response.status_code == 403, path
        assert not any(h.startswith("access-control-") for h in response.headers), path


def test_state_changing_api_routes_take_only_json(variant):
    server = variant["server"]
    key = {"Authorization": "Bearer key-1"} if variant["auth"] else {}
    url = server.url + "/v1/internal/model/unload"
    for content_type, body in (("text/plain", "{}"), ("text/plain;charset=UTF-8", ""),
                               ("application/x-www-form-urlencoded", "a=b"), ("multipart/form-data; boundary=x", "--x--"),
                               (None, "{}")):
        headers = {**key, "Host": variant["host"], **({"Content-Type": content_type} if content_type else {})}
        response = httpx.post(url, content=body.encode(), headers=headers, timeout=30)
        assert response.status_code == 415, (content_type, response.status_code, response.text)
        assert "JSON" in response.json()["error"]["message"]
    assert server.health()["model"] == "parlour-micro"  # none of them unloaded the model
    ok = httpx.post(server.url + "/v1/internal/stop-generation", headers={**key, "Host": variant["host"]}, timeout=30)
    assert ok.status_code == 200  # no body at all: allowed (curl -X POST)
    ok = httpx.post(server.url + "/v1/internal/stop-generation", json={}, timeout=30,
                    headers={**key, "Host": variant["host"], "Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_ui_event_bodies_are_bounded(variant):
    server = variant["server"]
    big = b'{"data": ["' + b"x" * 3_000_000 + b'"], "fn_index": 0, "session_hash": "s"}'
    for headers in ({"Content-Type": "application/json"}, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}):
        content = big if "Transfer-Encoding" not in headers else iter([big[i:i + 65536] for i in range(0, len(big), 65536)])
        response = httpx.post(server.url + "/gradio_api/queue/join", content=content, timeout=30,
                              headers={**headers, "Host": variant["host"]})
        assert response.status_code == 413, response.text[:200]
    assert server.health()["requests"] == 0


# -- a real browser: the other page tries, the server state shows nothing happened ------------------
READS = """async (target) => {
  const out = {};
  const tries = {
    config: () => fetch(target + '/config', {credentials: 'include'}),
    info: () => fetch(target + '/gradio_api/info', {credentials: 'include'}),
    models: () => fetch(target + '/v1/models', {credentials: 'include'}),
    health: () => fetch(target + '/health'),
    page: () => fetch(target + '/', {credentials: 'include'}),
    join: () => fetch(target + '/gradio_api/queue/join', {method: 'POST', credentials: 'include',
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({data: [], fn_index: 0, session_hash: 'attacker', event_data: null, trigger_id: null})}),
    chat: () => fetch(target + '/v1/chat/completions', {method: 'POST', credentials: 'include',
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({messages: [{role: 'user', content: 'hi'}], max_tokens: 2})}),
  };
  for (const [name, run] of Object.entries(tries)) {
    try {
      const response = await run();
      out[name] = 'READ ' + response.status + ' ' + (await response.text()).slice(0, 80);
    } catch (error) {
      out[name] = 'blocked';
    }
  }
  out.events = await new Promise((resolve) => {
    const source = new EventSource(target + '/gradio_api/queue/data?session_hash=attacker', {withCredentials: true});
    source.onmessage = (event) => { source.close(); resolve('READ ' + event.data.slice(0, 80)); };
    source.onerror = () => { source.close(); resolve('blocked'); };
  });
  return out;
}"""

DRIVE_BY = """async (target) => {
  const blind = (path, body, type) => fetch(target + path, {method: 'POST', mode: 'no-cors', credentials: 'include',
    body: body, headers: type ? {'Content-Type': type} : {}}).then(() => 'sent', () => 'failed');
  const form = new FormData();
  form.append('files', new Blob([new Uint8Array(60 * 1024 * 1024)]), 'big.bin');
  return {
    unload: await blind('/v1/internal/model/unload'),
    unload_text: await blind('/v1/internal/model/unload', '{}', 'text/plain'),
    stop: await blind('/v1/internal/stop-generation', '{}', 'text/plain'),
    load: await blind('/v1/internal/model/load', JSON.stringify({model_name: 'parlour-micro-gpt2'}), 'text/plain'),
    complete: await blind('/v1/completions', JSON.stringify({prompt: 'x', max_tokens: 4}), 'text/plain'),
    join: await blind('/gradio_api/queue/join', JSON.stringify({data: ['hi'], fn_index: 0, session_hash: 'z'}),
                      'text/plain'),
    upload: await fetch(target + '/gradio_api/upload', {method: 'POST', mode: 'no-cors', credentials: 'include',
                        body: form}).then(() => 'sent', () => 'failed'),
    login: await blind('/login', 'username=bob&password=pw-bob', 'application/x-www-form-urlencoded'),
  };
}"""


def _state(variant):
    server = variant["server"]
    health = server.health()
    return {"model": health["model"], "requests": health["requests"],
            "files": snapshot(server.root / "user_data", ignore=("chats.sqlite-shm", "chats.sqlite-wal"))}


def _log_in(page, variant):
    page.goto(variant["own"] + "/")
    page.fill("input[name=username], input[type=text]", "ann")
    page.fill("input[type=password]", "pw-ann")
    page.keyboard.press("Enter")
    page.wait_for_selector("#chat-input", timeout=60_000)


@pytest.mark.parametrize("attacker_host", ["127.0.0.1", "localhost", "evil.test"])
def test_other_page_reads_nothing_and_changes_nothing(variant, other_site, resolving_browser, attacker_host):
    context = resolving_browser.new_context()
    try:
        page = context.new_page()
        if variant["auth"]:
            _log_in(page, variant)  # the victim is logged in: the attacker's requests carry ann's cookie
        else:
            page.goto(variant["own"] + "/")
            page.wait_for_selector("#chat-input", timeout=60_000)  # the UI itself works from its own origin
        before = _state(variant)
        attacker = context.new_page()
        attacker.goto(f"http://{attacker_host}:{other_site.server_address[1]}/")
        reads = attacker.evaluate(READS, variant["own"])
        assert all(result == "blocked" for result in reads.values()), json.dumps(reads, indent=1)
        sent = attacker.evaluate(DRIVE_BY, variant["own"])
        assert set(sent.values()) <= {"sent", "failed"}, sent
        # a form posted from the other page (a navigation, so no CORS at all) is refused too
        attacker.set_content(f"<form method=post enctype=text/plain action='{variant['own']}/v1/internal/model/unload'>"
                             "<input name=a value=b></form>")
        with attacker.expect_navigation():
            attacker.evaluate("() => document.forms[0].submit()")
        assert "cross-origin" in attacker.content()
        after = _state(variant)
        assert after == before, "a request from another origin changed the server"
        assert after["model"] == "parlour-micro"
        assert not list((variant["server"].root / "user_data").rglob("big.bin"))
        if variant["auth"]:  # the victim's own page still works
            assert page.evaluate("() => fetch('/config').then(r => r.status)") == 200
    finally:
        context.close()


# -- --cors-origin: a named browser app may call /v1, without the user's cookies --------------------
@pytest.fixture(scope="module")
def cors_server(module_server, other_site):
    listed = f"http://127.0.0.1:{other_site.server_address[1]}"
    return module_server("--cors-origin", listed), listed


def test_a_listed_origin_may_call_the_api_without_credentials(cors_server, other_site):
    server, listed = cors_server
    models = httpx.get(server.url + "/v1/models", headers={"Origin": listed}, timeout=30)
    assert models.status_code == 200 and models.headers["access-control-allow-origin"] == listed
    assert "access-control-allow-credentials" not in models.headers
    preflight = httpx.options(server.url + "/v1/chat/completions", timeout=30, headers={
        "Origin": listed, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == listed
    config = httpx.get(server.url + "/config", headers={"Origin": listed}, timeout=30)
    assert config.status_code == 200 and "access-control-allow-credentials" not in config.headers
    other = f"http://localhost:{other_site.server_address[1]}"  # same port, another origin: not listed
    assert httpx.get(server.url + "/v1/models", headers={"Origin": other}, timeout=30).status_code == 403


def test_a_listed_page_in_a_browser(cors_server, resolving_browser):
    server, listed = cors_server
    page = resolving_browser.new_page()
    try:
        page.goto(listed + "/")
        result = page.evaluate("""async (target) => {
          const models = await fetch(target + '/v1/models').then(r => r.json(), () => 'blocked');
          const withCookies = await fetch(target + '/v1/models', {credentials: 'include'}).then(() => 'read', () => 'blocked');
          const reply = await fetch(target + '/v1/chat/completions', {method: 'POST',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({messages: [{role: 'user', content: 'hi'}], max_tokens: 2})}).then(r => r.status, () => 'blocked');
          return {models, withCookies, reply};
        }""", server.url)
        assert result["models"]["data"][0]["id"] == "parlour-micro"
        assert result["withCookies"] == "blocked"  # never with the user's cookies
        assert result["reply"] == 200
    finally:
        page.close()
