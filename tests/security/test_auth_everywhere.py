"""With --auth, the page, Gradio's event API and the file route all need a login; with --api-key,
every /v1 route needs the key."""

import httpx
import pytest
from gradio_client import Client


@pytest.fixture()
def server(start_server, models_dir):
    return start_server("--models-dir", str(models_dir), "--model", "parlour-micro", "--auth", "ann:secret-pw",
                        "--api-key", "k-123")


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
