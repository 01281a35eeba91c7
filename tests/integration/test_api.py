"""The OpenAI-compatible API, black-box: the official `openai` client against a real server process
serving the micro model. Expected texts come from the same pipeline run in this process (greedy is
deterministic), so a reply that is mixed up, cut short or decoded wrongly fails."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import openai
import pytest

from modules.generation import GenerationRequest
from modules.presets import Preset
from tests.conftest import ServerProcess, ROOT

MODEL = "parlour-micro"
HELLO = [{"role": "user", "content": "Hello there"}]


def _start(tmp_path, models_dir, *args: str) -> ServerProcess:
    server = ServerProcess(["--user-data", str(tmp_path / "user_data"), "--settings", str(tmp_path / "s.yaml"),
                            "--models-dir", str(models_dir), "--model", MODEL, *args],
                           cwd=ROOT, log=tmp_path / "server.log")
    try:
        server.wait_until(lambda h: h["model"] is not None)
    except Exception:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    srv = _start(tmp_path_factory.mktemp("api"), models_dir, "--max-body-bytes", "65536")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local(models_dir, tmp_path_factory):
    """The same model in this process: the reference for what the server must answer."""
    from modules.app import App
    from modules.settings import Settings

    tmp = tmp_path_factory.mktemp("local")
    app = App.build(Settings(models_dir=models_dir, user_data=tmp, presets_dir=ROOT / "presets",
                             settings=tmp / "s.yaml"))
    app.models.load(MODEL)
    return app


def reference(app, **request) -> tuple[str, str | None, int, int]:
    final = list(app.pipeline.stream(GenerationRequest(**request)))[-1]
    return final.text, final.finish_reason, final.prompt_tokens, final.tokens


def greedy(n: int = 20, **extra) -> Preset:
    return Preset(temperature=0.0, max_new_tokens=n, ban_eos_token=True, **extra)


# -- the OpenAI routes ----------------------------------------------------------------------------

def test_models_list_names_the_loaded_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_completion_text_usage_and_finish_reason(client, local):
    text, _, prompt_tokens, tokens = reference(local, preset=greedy(20), prompt="def main():")
    out = client.completions.create(model=MODEL, prompt="def main():", max_tokens=20, temperature=0,
                                    extra_body={"ban_eos_token": True})
    assert out.choices[0].text == text
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (prompt_tokens, tokens) == (prompt_tokens, 20)
    assert out.usage.total_tokens == prompt_tokens + 20


def test_chat_completion_goes_through_the_chat_template(client, local):
    text, _, prompt_tokens, _ = reference(local, preset=greedy(16), messages=HELLO)
    out = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=16, temperature=0,
                                         extra_body={"ban_eos_token": True})
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == text
    assert out.usage.prompt_tokens == prompt_tokens and out.usage.completion_tokens == 16


def test_streaming_equals_non_streaming_and_reports_usage(client):
    kwargs = dict(model=MODEL, messages=HELLO, max_tokens=24, temperature=0, extra_body={"ban_eos_token": True})
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_completion_streaming_without_usage(client):
    chunks = list(client.completions.create(model=MODEL, prompt="import", max_tokens=12, temperature=0,
                                            stream=True, extra_body={"ban_eos_token": True}))
    assert all(c.usage is None for c in chunks)
    whole = client.completions.create(model=MODEL, prompt="import", max_tokens=12, temperature=0,
                                      extra_body={"ban_eos_token": True})
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text


def test_stop_string_cuts_the_reply(client, local):
    text, *_ = reference(local, preset=greedy(40), prompt="class")
    stop = text[10:13]
    expected = text[: text.find(stop)]
    out = client.completions.create(model=MODEL, prompt="class", max_tokens=40, temperature=0, stop=[stop],
                                    extra_body={"ban_eos_token": True})
    assert out.choices[0].text == expected
    assert out.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=MODEL, prompt="class", max_tokens=40, temperature=0, stop=stop,
                                         stream=True, extra_body={"ban_eos_token": True})
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_seed_makes_sampling_reproducible_streamed_or_not(client):
    kwargs = dict(model=MODEL, prompt="for", max_tokens=30, temperature=1.5, seed=1234,
                  extra_body={"ban_eos_token": True})
    first = client.completions.create(**kwargs).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs))
    other = client.completions.create(**{**kwargs, "seed": 99}).choices[0].text
    assert streamed == first
    assert other != first


def test_n_choices_with_a_seed_differ_and_are_reproducible(client):
    kwargs = dict(model=MODEL, prompt="x", max_tokens=15, temperature=1.5, seed=5, n=2,
                  extra_body={"ban_eos_token": True})
    out = client.completions.create(**kwargs)
    again = client.completions.create(**kwargs)
    assert [c.index for c in out.choices] == [0, 1]
    assert out.choices[0].text != out.choices[1].text
    assert [c.text for c in out.choices] == [c.text for c in again.choices]
    assert out.usage.completion_tokens == 30


def test_preset_fields_and_preset_name_as_extra_body(client, local):
    text, *_ = reference(local, preset=greedy(10, top_k=3), prompt="if")
    out = client.completions.create(model=MODEL, prompt="if", max_tokens=10, temperature=0,
                                    extra_body={"ban_eos_token": True, "top_k": 3})
    assert out.choices[0].text == text
    named = client.completions.with_raw_response.create(model=MODEL, prompt="if", max_tokens=10,
                                                        extra_body={"preset": "Deterministic", "ban_eos_token": True,
                                                                    "not_a_sampler": 5})
    preset = local.presets.load("Deterministic")
    expected, *_ = reference(local, preset=preset.model_copy(update={"max_new_tokens": 10, "ban_eos_token": True}),
                             prompt="if")
    assert named.parse().choices[0].text == expected
    assert named.headers["x-parlour-ignored-fields"] == "not_a_sampler"  # unknown fields are reported, not hidden


def test_text_generation_webui_chat_fields_are_accepted(client, local):
    text, *_ = reference(local, preset=greedy(8), messages=[{"role": "system", "content": "Be brief."}, *HELLO])
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=HELLO, max_tokens=8, temperature=0,
        extra_body={"ban_eos_token": True, "mode": "instruct", "context": "Be brief.", "greeting": "Hi!"})
    assert raw.parse().choices[0].message.content == text  # `context` became the system prompt
    assert raw.headers["x-parlour-ignored-fields"] == "greeting"  # shown in the UI only: reported


def test_chat_mode_character_and_names_build_the_prompt_as_the_chat_tab_does(server, client, local):
    from modules.chat import request_for, resolve_options

    fields = {"mode": "chat", "character": "Example", "name1": "Bob"}
    api = httpx.Client(base_url=server.url + "/v1/internal")
    prompt = api.post("/chat-prompt", json={"messages": HELLO, **fields}).json()["prompt"]
    assert "keeper of a small hilltop observatory" in prompt  # the character's context, {{char}} filled in
    assert "Bob: Hello there" in prompt and prompt.rstrip().endswith("Chiara:")
    options = resolve_options(local, "api", mode="chat", character="Example", name1="Bob")
    expected = list(local.pipeline.stream(request_for(HELLO, options, greedy(8))))[-1].text
    out = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0,
                                         extra_body={"ban_eos_token": True, **fields})
    assert out.choices[0].message.content == expected
    instruct = api.post("/chat-prompt", json={"messages": HELLO, "mode": "instruct",
                                              "instruction_template": "Alpaca"}).json()["prompt"]
    assert "### Instruction:" in instruct and "Hello there" in instruct


def test_chat_fields_with_bad_names_are_clear_errors(client):
    for fields, status, param in [({"character": "no-such-one"}, 404, "character"),
                                  ({"character": "../../etc/passwd"}, 400, "character"),
                                  ({"instruction_template": "nope"}, 404, "instruction_template"),
                                  ({"instruction_template_str": "{{ ''.__class__.__mro__ }}"}, 400,
                                   "instruction_template_str"),
                                  ({"mode": "wizard"}, 400, "mode")]:
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, extra_body=fields)
        assert (err.value.status_code, err.value.body["param"]) == (status, param), fields


def test_chat_logprobs_score_the_reply_the_client_gets(client, local):
    backend = local.models.current()
    out = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0,
                                         logprobs=True, top_logprobs=3, extra_body={"ban_eos_token": True})
    content = out.choices[0].logprobs.content
    assert "".join(t.token for t in content) == out.choices[0].message.content
    # the values are the model's own: recompute them with one forward pass in this process
    prompt = local.pipeline.build_prompt(backend, GenerationRequest(preset=greedy(8), messages=HELLO))
    head = backend.prompt_ids(prompt, greedy(8))
    ids = backend.tokenize(prompt + out.choices[0].message.content)[len(backend.tokenize(prompt)):]
    rows = backend.token_logprobs(head + ids)
    for k, (entry, token_id) in enumerate(zip(content, ids)):
        assert entry.logprob == pytest.approx(float(rows[len(head) + k - 1][token_id]), abs=1e-3)
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob >= entry.logprob - 1e-4
    streamed = [c for chunk in client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3, stream=True,
        extra_body={"ban_eos_token": True}) for c in (chunk.choices[0].logprobs.content or [] if chunk.choices and
                                                      chunk.choices[0].logprobs else [])]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in content], abs=1e-3)


def test_completion_logprobs_with_echo_cover_prompt_and_reply(client):
    out = client.completions.create(model=MODEL, prompt="def main():", max_tokens=6, temperature=0, logprobs=2,
                                    echo=True, extra_body={"ban_eos_token": True})
    lp = out.choices[0].logprobs
    assert "".join(lp.tokens) == out.choices[0].text and out.choices[0].text.startswith("def main():")
    assert lp.token_logprobs[0] is None and all(v <= 0 for v in lp.token_logprobs[1:])
    assert all(len(top) == 2 for top in lp.top_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=HELLO, top_logprobs=2)
    assert err.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="x", logprobs=50)
    assert err.value.body["param"] == "logprobs"


# -- errors ---------------------------------------------------------------------------------------

def test_out_of_range_value_is_400_naming_the_field(client):
    for field, value in [("temperature", 9.0), ("max_tokens", 0), ("top_p", 1.5)]:
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model=MODEL, prompt="x", **{field: value})
        assert err.value.body["param"] == field and field in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="x", n=9)
    assert err.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "x"}])
    assert err.value.body["param"] == "messages.0.role"


def test_unknown_model_and_preset_are_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4", messages=HELLO)
    assert err.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model=MODEL, prompt="x", extra_body={"preset": "no-such-preset"})
    assert err.value.body["param"] == "preset"


def test_malformed_json_and_oversized_body(server):
    r = httpx.post(server.url + "/v1/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x" * 70_000})
    assert r.status_code == 413 and "65,536" in r.json()["error"]["message"]
    r = httpx.get(server.url + "/v1/no-such-route")
    assert r.status_code == 404 and "error" in r.json()


def test_prompt_longer_than_context_is_400_unless_truncation_is_asked(client):
    long_prompt = "word " * 3000  # the micro model's context is 2048 tokens
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=4)
    assert err.value.body["param"] == "prompt" and err.value.body["code"] == "context_length_exceeded"
    raw = client.completions.with_raw_response.create(model=MODEL, prompt=long_prompt, max_tokens=4,
                                                      extra_body={"truncate_prompt": True})
    body = json.loads(raw.text)
    assert body["truncated_prompt_tokens"] > 0
    assert body["usage"]["prompt_tokens"] + 4 <= 2048


def test_unsupported_openai_features_are_refused_not_ignored(client):
    with pytest.raises(openai.BadRequestError) as err:  # function calling is a chat feature
        client.completions.create(model=MODEL, prompt="Hi", extra_body={"tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "properties": {}}}}]})
    assert err.value.body["param"] == "tools"


def test_logit_bias_steers_the_reply(client, local):
    plain = client.completions.create(model=MODEL, prompt="if", max_tokens=6, temperature=0,
                                      extra_body={"ban_eos_token": True}).choices[0].text
    first = local.models.current().tokenize(plain)[0]
    banned = client.completions.create(model=MODEL, prompt="if", max_tokens=6, temperature=0,
                                       logit_bias={str(first): -100}, extra_body={"ban_eos_token": True})
    assert banned.choices[0].text != plain
    assert local.models.current().tokenize(banned.choices[0].text)[:1] != [first]
    for bias, param in [({"999999": 5}, "logit_bias"), ({"5": 500}, "logit_bias")]:
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model=MODEL, prompt="x", max_tokens=2, logit_bias=bias)
        assert err.value.body["param"] == param


def test_host_header_other_than_localhost_is_refused(server):
    assert httpx.get(server.url + "/v1/models", headers={"Host": "evil.example:80"}).status_code == 403
    assert httpx.get(server.url + "/", headers={"Host": "evil.example"}).status_code == 403  # the UI too
    assert httpx.get(server.url + "/v1/models", headers={"Host": f"localhost:{server.port}"}).status_code == 200


def test_cors_is_off_by_default(server):
    r = httpx.options(server.url + "/v1/chat/completions", headers={
        "Origin": "http://site.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers


# -- /v1/internal ---------------------------------------------------------------------------------

def test_internal_token_routes(server, local):
    backend = local.models.current()
    api = httpx.Client(base_url=server.url + "/v1/internal")
    enc = api.post("/encode", json={"text": "hello world"}).json()
    assert enc == {"tokens": backend.tokenize("hello world"), "length": len(backend.tokenize("hello world"))}
    assert api.post("/decode", json={"tokens": enc["tokens"]}).json() == {"text": "hello world"}
    assert api.post("/token-count", json={"text": "hello world"}).json() == {"length": enc["length"]}
    bad = api.post("/decode", json={"tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens.0"


def test_internal_logits_and_chat_prompt(server, local):
    api = httpx.Client(base_url=server.url + "/v1/internal")
    logits = api.post("/logits", json={"prompt": "def", "top_logits": 5}).json()["logits"]
    probs = list(logits.values())
    assert 1 <= len(probs) <= 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    greedy_token = reference(local, preset=greedy(1), prompt="def")[0]
    assert next(iter(logits)) == greedy_token
    cut = api.post("/logits", json={"prompt": "def", "top_logits": 5, "use_samplers": True, "top_k": 1}).json()
    assert list(cut["logits"].values())[0] == pytest.approx(1.0)
    prompt = api.post("/chat-prompt", json={"messages": HELLO}).json()["prompt"]
    assert prompt == local.models.current().chat_template.render(HELLO, add_generation_prompt=True,
                                                                 **local.models.current().template_vars())


def test_internal_model_routes(server):
    api = httpx.Client(base_url=server.url + "/v1/internal", timeout=60)
    assert api.get("/model/list").json() == {"model_names": ["parlour-micro", "parlour-micro-gpt2"]}
    assert api.get("/model/info").json()["model_name"] == MODEL
    assert api.post("/model/load", json={"model_name": "nope"}).status_code == 404
    assert api.post("/model/load", json={"model_name": "../etc"}).status_code == 404
    assert api.get("/health").json()["status"] == "ok"


# -- many users at once ---------------------------------------------------------------------------

def test_disconnect_mid_stream_ends_the_generation(server):
    before = server.health()
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", server.url + "/v1/completions", json={
                "prompt": "x", "max_tokens": 2000, "temperature": 0, "ban_eos_token": True, "stream": True}) as r:
            lines = r.iter_lines()
            assert sum(1 for _, line in zip(range(6), lines) if line.startswith("data:")) >= 3
            assert server.health()["active"] == 1
    after = server.wait_until(lambda h: h["active"] == 0)  # the server's own counter, no sleeping
    generated = after["tokens"] - before["tokens"]
    assert generated < 2000, "the model went on generating after the client left"
    internal = httpx.get(server.url + "/v1/internal/health").json()
    assert internal["api_disconnects"] >= 1 and internal["api_running"] == 0
    # and the model is free at once for the next request
    assert httpx.post(server.url + "/v1/completions", json={"prompt": "y", "max_tokens": 3}, timeout=60).status_code == 200


@pytest.fixture(scope="module")
def serial(tmp_path_factory, models_dir):
    """A server that generates one request at a time through generate() (the default batches)."""
    srv = _start(tmp_path_factory.mktemp("serial"), models_dir, "--batch-size", "1")
    yield srv
    srv.stop()


@pytest.mark.parametrize("which", ["serial", "server"])
def test_four_concurrent_streams_get_their_own_text(request, which):
    """One at a time (queued) and batched: each stream gets exactly its own greedy text."""
    srv = request.getfixturevalue(which)
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    prompts = ["def", "class", "import", "while"]

    def ask(prompt: str, stream: bool) -> str:
        kwargs = dict(model=MODEL, prompt=prompt, max_tokens=40, temperature=0, extra_body={"ban_eos_token": True})
        if not stream:
            return client.completions.create(**kwargs).choices[0].text
        return "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs))

    alone = {p: ask(p, False) for p in prompts}
    assert len(set(alone.values())) == 4  # distinct, so mixing would show
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = dict(zip(prompts, pool.map(lambda p: ask(p, True), prompts)))
    assert together == alone
    largest = httpx.get(srv.url + "/v1/internal/health").json()["largest_batch"]
    assert largest == 1 if which == "serial" else largest >= 2  # batched: streams shared forward passes


# -- keys, queue, CORS: a second server with them set ---------------------------------------------

@pytest.fixture(scope="module")
def guarded(tmp_path_factory, models_dir):
    srv = _start(tmp_path_factory.mktemp("guarded"), models_dir, "--api-key", "sk-user", "--admin-key", "sk-admin",
                 "--max-queue", "1", "--cors-origin", "http://allowed.example",
                 "--batch-size", "1")  # one running slot: the queue tests fill it with one request
    yield srv
    srv.stop()


def test_api_key_is_required_on_every_route(guarded):
    for key in (None, "wrong", "sk-user-but-longer"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        for method, path in [("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/v1/internal/health"),
                             ("GET", "/v1/nope")]:
            r = httpx.request(method, guarded.url + path, headers=headers, json={"prompt": "x"})
            assert r.status_code == 401, (key, path)
            assert r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.url + "/v1", api_key="wrong", max_retries=0).models.list()
    good = openai.OpenAI(base_url=guarded.url + "/v1", api_key="sk-user", max_retries=0)
    assert [m.id for m in good.models.list().data] == [MODEL]


def test_admin_routes_need_the_admin_key(guarded):
    user = {"Authorization": "Bearer sk-user"}
    admin = {"Authorization": "Bearer sk-admin"}
    assert httpx.get(guarded.url + "/v1/internal/model/list", headers=user).status_code == 401
    assert httpx.post(guarded.url + "/v1/internal/model/unload", headers=user).status_code == 401
    assert httpx.get(guarded.url + "/v1/internal/model/list", headers=admin).status_code == 200
    assert httpx.get(guarded.url + "/v1/internal/model/info", headers=user).status_code == 200


def test_cors_allows_only_the_named_origin(guarded):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    ok = httpx.options(guarded.url + "/v1/chat/completions", headers={"Origin": "http://allowed.example", **preflight})
    assert ok.headers.get("access-control-allow-origin") == "http://allowed.example"
    other = httpx.options(guarded.url + "/v1/chat/completions", headers={"Origin": "http://evil.example", **preflight})
    assert other.headers.get("access-control-allow-origin") is None


def _long_stream(server, key: str, http: httpx.Client):
    return http.stream("POST", server.url + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, json={
        "prompt": "x", "max_tokens": 2000, "temperature": 0, "ban_eos_token": True, "stream": True})


def _read_all(response) -> tuple[str, str | None]:
    text, finish = "", None
    for line in response.iter_lines():
        if line.startswith("data: {"):
            choice = json.loads(line[6:])["choices"][0]
            text += choice["text"]
            finish = choice["finish_reason"] or finish
    return text, finish


def test_queue_full_is_503_with_retry_after(guarded):
    headers = {"Authorization": "Bearer sk-user"}
    with httpx.Client(timeout=60) as first, httpx.Client(timeout=60) as second:
        with _long_stream(guarded, "sk-user", first) as running:
            guarded.wait_until(lambda h: h["active"] == 1)
            with _long_stream(guarded, "sk-user", second) as waiting:  # takes the one waiting place
                guarded.wait_until(lambda h: h["queue_waiting"] == 1)
                r = httpx.post(guarded.url + "/v1/completions", headers=headers, json={"prompt": "x", "max_tokens": 2})
                assert r.status_code == 503 and r.headers["retry-after"].isdigit()
                assert r.json()["error"]["code"] == "queue_full"
                httpx.post(guarded.url + "/v1/internal/stop-generation", headers=headers)
                _, finish = _read_all(running)
                assert finish == "stop"  # ended early by stop-generation, not by length
                assert waiting.status_code == 200
    guarded.wait_until(lambda h: h["active"] == 0 and h["queue_waiting"] == 0)


def test_stop_generation_stops_only_the_callers_own(guarded):
    with httpx.Client(timeout=60) as mine:
        with _long_stream(guarded, "sk-user", mine) as response:
            guarded.wait_until(lambda h: h["active"] == 1)
            before = guarded.health()["tokens"]
            # another caller (a different key) asks to stop: not its request, nothing happens
            httpx.post(guarded.url + "/v1/internal/stop-generation", headers={"Authorization": "Bearer sk-admin"})
            guarded.wait_until(lambda h: h["tokens"] > before + 20)
            assert guarded.health()["active"] == 1
            httpx.post(guarded.url + "/v1/internal/stop-generation", headers={"Authorization": "Bearer sk-user"})
            text, finish = _read_all(response)
    assert finish == "stop"
    after = guarded.wait_until(lambda h: h["active"] == 0)
    assert after["tokens"] - before < 2000


def test_disconnect_during_a_non_streaming_request_ends_the_generation(server):
    import socket

    before = server.health()
    body = json.dumps({"prompt": "x", "max_tokens": 2000, "temperature": 0, "ban_eos_token": True}).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        server.wait_until(lambda h: h["active"] == 1 and h["tokens"] > before["tokens"])
    after = server.wait_until(lambda h: h["active"] == 0)
    assert after["tokens"] - before["tokens"] < 2000


def test_streamed_choices_and_echo(client):
    chunks = list(client.completions.create(model=MODEL, prompt="x", max_tokens=6, temperature=1.5, seed=3, n=2,
                                            stream=True, echo=True, extra_body={"ban_eos_token": True}))
    texts = {0: "", 1: ""}
    for chunk in chunks:
        texts[chunk.choices[0].index] += chunk.choices[0].text
    whole = client.completions.create(model=MODEL, prompt="x", max_tokens=6, temperature=1.5, seed=3, n=2,
                                      echo=True, extra_body={"ban_eos_token": True})
    assert [texts[0], texts[1]] == [c.text for c in whole.choices]
    assert all(t.startswith("x") for t in texts.values())


def test_continue_final_message_extends_the_assistant_reply(client, local):
    messages = [*HELLO, {"role": "assistant", "content": "Well"}]
    text, *_ = reference(local, preset=greedy(8), messages=messages, continue_last=True)
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                         extra_body={"ban_eos_token": True, "continue_final_message": True})
    assert out.choices[0].message.content == text
    fresh, *_ = reference(local, preset=greedy(8), messages=messages)
    assert fresh != text  # continuing is not the same as answering after the assistant's turn


def test_n_choices_are_generated_together_when_the_server_batches(server, local):
    text, *_ = reference(local, preset=greedy(30), prompt="with")
    out = httpx.post(server.url + "/v1/completions", timeout=60, json={
        "prompt": "with", "max_tokens": 30, "temperature": 0, "ban_eos_token": True, "n": 3}).json()
    assert [c["text"] for c in out["choices"]] == [text] * 3
    assert out["usage"]["completion_tokens"] == 90


def test_model_load_and_unload(serial):
    api = httpx.Client(base_url=serial.url + "/v1", timeout=120)
    assert api.post("/internal/model/load", json={"model_name": "parlour-micro-gpt2"}).text == '"OK"'
    assert [m["id"] for m in api.get("/models").json()["data"]] == ["parlour-micro-gpt2"]
    wrong = api.post("/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "model_not_loaded"
    assert api.post("/completions", json={"model": "parlour-micro-gpt2", "prompt": "x", "max_tokens": 2}).status_code == 200
    assert api.post("/internal/model/unload").text == '"OK"'
    assert api.get("/models").json()["data"] == []
    idle = api.post("/completions", json={"prompt": "x", "max_tokens": 2})
    assert idle.status_code == 503 and "retry-after" in idle.headers
    for args, field in [({"trust_remote_code": True}, "trust_remote_code"), ({"dtype": "int3"}, "dtype"),
                        ({"base_url": "http://evil.example/v1"}, "base_url")]:
        refused = api.post("/internal/model/load", json={"model_name": MODEL, "args": args})
        assert refused.status_code == 400 and field in refused.text, refused.text
    assert api.get("/models").json()["data"] == []  # nothing was loaded by the refused requests
    loaded = api.post("/internal/model/load", json={"model_name": MODEL, "args": {"dtype": "bfloat16"}})
    assert loaded.status_code == 200
    info = api.get("/internal/model/info").json()
    assert info["model_name"] == MODEL and info["info"]["dtype"] == "bfloat16"


def test_an_idle_connection_outlives_a_clients_keep_alive(server):
    """httpx (and so the openai client) reuses a connection idle for up to 5 s; uvicorn's default also
    closes at 5 s, so a reuse at that moment met a closed socket (a reset in the load test). The server
    keeps idle connections longer: a request on a connection idle for 6 s is answered on that connection."""
    import socket
    import time

    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        reader = sock.makefile("rb")
        for attempt in range(2):
            sock.sendall(request)
            # a whole response: status line, headers, then exactly Content-Length bytes of body (one recv()
            # may return part of it, and the next recv() would then read the old body as the new answer)
            status = reader.readline()
            assert status.startswith(b"HTTP/1.1 200"), (attempt, status[:100])
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = reader.read(length)
            assert b'"status"' in body, (attempt, body[:100])
            if attempt == 0:
                time.sleep(6)  # the idle time under test, not a wait for something to happen
