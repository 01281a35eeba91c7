"""One login cannot act as another: the API (which acts as the user `api`) never returns a login's
profile, Gradio's deep links are off, and a Gradio session or event id belongs to the login that first
used it — even when another login learns the id (ids appear in URLs and logs)."""

from __future__ import annotations

import json

import httpx
import pytest
from gradio_client import Client

from modules.presets import Preset
from modules.store import ChatStore
from tests.security.conftest import login_cookies

KEY = {"Authorization": "Bearer key-1"}
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def server(module_server):
    server = module_server("--auth", "ann:pw-ann,bob:pw-bob", "--api-key", "key-1")
    store = ChatStore(server.root / "user_data" / "chats.sqlite")
    store.set_profile("ann", "Annabel Secretname", "ann's private bio: allergic to penicillin")
    store.set_profile("local", "Local Person", "the no-login user's bio")
    return server


@pytest.mark.parametrize("mode", ["chat", "chat-instruct", "instruct"])
@pytest.mark.parametrize("user", ["ann", "local", "bob", "api"])
def test_the_api_never_reads_a_logins_profile(server, mode, user):
    for path in ("/v1/internal/chat-prompt", "/v1/chat/completions"):
        body = {"messages": HELLO, "mode": mode, "user": user, "max_tokens": 2}
        response = httpx.post(server.url + path, json=body, headers=KEY, timeout=60)
        assert response.status_code == 200, response.text
        text = json.dumps(response.json())
        for secret in ("Secretname", "penicillin", "Local Person", "no-login user"):
            assert secret not in text, (path, secret)
    prompt = httpx.post(server.url + "/v1/internal/chat-prompt", headers=KEY, timeout=60,
                        json={"messages": HELLO, "mode": "chat", "user": user}).json()["prompt"]
    assert "api:" in prompt  # the API's own identity speaks, whatever `user` claims


def test_a_login_named_api_cannot_exist(tmp_path):
    from modules.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="reserved"):
        load_settings(["--auth", "api:pw", "--settings", str(tmp_path / "none.yaml")]).logins()


def test_deep_links_are_off(server):
    ann = login_cookies(server, "ann", "pw-ann")
    client = Client(server.url, auth=("ann", "pw-ann"), verbose=False)
    client.predict("my secret plan", *Preset(max_new_tokens=2).model_dump().values(), api_name="/chat_send")
    # a state file planted where Gradio would look for one
    planted = server.root / "user_data" / "cache" / "gradio" / "deep_links" / "planted"
    planted.mkdir(parents=True)
    (planted / "state.json").write_text("[]")
    for cookies in (ann, login_cookies(server, "bob", "pw-bob")):
        for path, params in (("/gradio_api/deep_link", {"session_hash": client.session_hash}),
                             ("/", {"deep_link": "planted"}), ("/config", {"deep_link": "planted"})):
            response = httpx.get(server.url + path, params=params, cookies=cookies, timeout=30)
            assert response.status_code == 404, (path, response.status_code, response.text[:200])
            assert "deep links are turned off" in response.text
    assert not (server.root / "user_data" / "cache" / "gradio" / "deep_links" / client.session_hash).exists()


def test_a_session_belongs_to_its_login(server):
    client = Client(server.url, auth=("ann", "pw-ann"), verbose=False)
    preset = list(Preset(max_new_tokens=2).model_dump().values())
    client.predict("my secret plan", *preset, api_name="/chat_send")
    session = client.session_hash
    bob = login_cookies(server, "bob", "pw-bob")
    join = {"data": ["x", *preset], "fn_index": 0, "session_hash": session, "event_data": None, "trigger_id": None}
    attempts = {
        "queue/data": lambda c: httpx.get(server.url + "/gradio_api/queue/data", params={"session_hash": session},
                                          cookies=c, timeout=30),
        "queue/join": lambda c: httpx.post(server.url + "/gradio_api/queue/join", json=join, cookies=c, timeout=30),
        "heartbeat": lambda c: httpx.get(f"{server.url}/gradio_api/heartbeat/{session}", cookies=c, timeout=30),
        "cancel": lambda c: httpx.post(server.url + "/gradio_api/cancel", cookies=c, timeout=30,
                                       json={"session_hash": session, "fn_index": 0, "event_id": "e"}),
    }
    before = server.health()["requests"]
    for name, attempt in attempts.items():
        response = attempt(bob)
        assert response.status_code == 403, (name, response.status_code, response.text[:200])
        assert "another login" in response.text
    assert server.health()["requests"] == before  # bob's join ran nothing in ann's session
    # ann herself, from a second login of hers, still uses her session; her client keeps working
    ann = login_cookies(server, "ann", "pw-ann")
    with httpx.stream("GET", server.url + "/gradio_api/queue/data", params={"session_hash": session},
                      cookies=ann, timeout=30) as response:
        assert response.status_code == 200
    assert client.predict("again", *preset, api_name="/chat_send")[1][-1]["role"] == "assistant"


def test_an_event_belongs_to_its_login(server):
    ann = login_cookies(server, "ann", "pw-ann")
    preset = list(Preset(max_new_tokens=2).model_dump().values())
    started = httpx.post(server.url + "/gradio_api/call/chat_send", json={"data": ["secret question", *preset]},
                         cookies=ann, timeout=30)
    assert started.status_code == 200, started.text
    event = started.json()["event_id"]
    bob = login_cookies(server, "bob", "pw-bob")
    stolen = httpx.get(f"{server.url}/gradio_api/call/chat_send/{event}", cookies=bob, timeout=60)
    assert stolen.status_code == 403 and "secret" not in stolen.text
    mine = httpx.get(f"{server.url}/gradio_api/call/chat_send/{event}", cookies=ann, timeout=60)
    assert mine.status_code == 200 and "event: complete" in mine.text
