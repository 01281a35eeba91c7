"""With --auth, the page, Gradio's event API and the file route all need a login; with --api-key,
every /v1 route needs the key."""

import httpx
import pytest
from gradio_client import Client


@pytest.fixture(scope="module")
def server(module_server):
    return module_server("--auth", "ann:secret-pw", "--api-key", "k-123")


def test_gradio_event_api_needs_a_login(server):
    with pytest.raises(Exception):
        Client(server.url, verbose=False)  # the client cannot even read the app's config
    for path in ("/config", "/gradio_api/info", "/gradio_api/queue/join", "/gradio_api/run/predict"):
        response = httpx.post(server.url + path, json={"data": ["hi"], "fn_index": 0, "session_hash": "x"}) \
            if "join" in path or "run" in path else httpx.get(server.url + path)
        assert response.status_code in (401, 403, 404, 405), (path, response.status_code)
    assert server.health()["requests"] == 0  # nothing was generated


def test_login_then_the_event_api_works(server):
    client = Client(server.url, auth=("ann", "secret-pw"), verbose=False)
    assert "/chat_send" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    with pytest.raises(Exception):
        Client(server.url, auth=("ann", "wrong"), verbose=False)


def test_api_routes_need_the_key(server):
    for path in ("/v1/models", "/v1/internal/model/info", "/v1/internal/health"):
        assert httpx.get(server.url + path).status_code == 401
        assert httpx.get(server.url + path, headers={"Authorization": "Bearer k-123"}).status_code == 200


DANGEROUS = ("listen", "share", "trust_remote_code", "trust remote code", "auth", "api_key", "api key",
             "admin_key", "admin key", "insecure")


def test_no_ui_event_takes_a_dangerous_flag(server):
    """Listening on all interfaces, sharing, remote code and logins come from the command line only:
    no event of the UI (what a browser, or a script with a login, can call) takes any of them."""
    client = Client(server.url, auth=("ann", "secret-pw"), verbose=False)
    api = client.view_api(print_info=False, return_format="dict")
    endpoints = {**api["named_endpoints"], **api["unnamed_endpoints"]}
    assert len(endpoints) > 20  # the whole UI was read, not an empty description
    for name, endpoint in endpoints.items():
        for param in endpoint["parameters"]:
            if name.startswith("/model_") and param.get("label") == "api_key":
                continue  # the remote loader's key for the engine it calls (RemoteOptions), not this server's
            words = f"{param.get('label') or ''} {param.get('parameter_name') or ''}".lower()
            assert not any(flag in words for flag in DANGEROUS), (name, param.get("label"), param.get("parameter_name"))
    # and the model-load route of the API refuses trust_remote_code (also tested in tests/integration/test_api.py)
    response = httpx.post(server.url + "/v1/internal/model/load", headers={"Authorization": "Bearer k-123"},
                          json={"model_name": "parlour-micro", "args": {"trust_remote_code": True}})
    assert response.status_code == 400 and "trust_remote_code" in response.json()["error"]["message"]
