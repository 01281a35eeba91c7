"""Hostile API requests: each gets a clear 4xx naming the field, in bounded time, and the server
stays up without generating anything for them."""

import httpx
import pytest

MODEL = "parlour-micro"


@pytest.fixture(scope="module")
def server(module_server):
    """One server takes every hostile request of this file: the last test checks that none of them
    generated anything and that it still answers."""
    return module_server()


def post(server, body=None, content=None, path="/v1/completions"):
    kwargs = {"content": content, "headers": {"content-type": "application/json"}} if content is not None else {"json": body}
    return httpx.post(server.url + path, timeout=30, **kwargs)


@pytest.mark.parametrize("field, value", [("max_tokens", 0), ("max_tokens", -1), ("max_tokens", 10**9),
                                          ("n", 10**6), ("temperature", "hot"), ("prompt", 5),
                                          ("top_k", -3), ("seed", "abc")])
def test_bad_values_are_400_naming_the_field(server, field, value):
    r = post(server, {"model": MODEL, "prompt": "x", "max_tokens": 4, field: value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field


def test_ten_megabyte_body_is_413(server):
    r = post(server, content=b'{"prompt": "' + b"x" * 10_000_000 + b'"}')
    assert r.status_code == 413


def test_invalid_utf8_and_non_object_bodies(server):
    assert post(server, content=b'{"prompt": "\xff\xfe"}').status_code == 400
    assert post(server, content=b"[1, 2, 3]").status_code in (400, 422)
    assert post(server, content=b"").status_code in (400, 422)


def test_ten_thousand_stop_strings_and_logit_bias(server):
    r = post(server, {"model": MODEL, "prompt": "x", "max_tokens": 4, "stop": ["s"] * 10_000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
    r = post(server, {"model": MODEL, "prompt": "x", "max_tokens": 4, "logit_bias": {"999999999": 100}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"


def test_prompt_far_beyond_context(server):
    r = post(server, {"model": MODEL, "prompt": "word " * 200_000, "max_tokens": 4})
    assert r.status_code in (400, 413)


def test_nothing_was_generated_and_the_server_is_fine(server):
    """Last in the file: the hostile requests above and these two generated nothing."""
    for body in ({"prompt": "x", "max_tokens": -1}, {"prompt": "x", "n": 10**6}):
        assert post(server, body).status_code == 400
    health = server.health()
    assert health["requests"] == 0 and health["active"] == 0
    assert post(server, {"model": MODEL, "prompt": "x", "max_tokens": 3}).status_code == 200
