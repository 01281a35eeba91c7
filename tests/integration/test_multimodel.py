"""Several models behind one server, loaded on demand by name: the official `openai` client against a
real server process with the two micro models (Llama and GPT-2). Expected texts come from the same
models run in this process (greedy is deterministic), so an answer from the wrong model fails. Loads
and evictions are counted by the server itself (GET /v1/internal/models); tests wait on that state,
never on time.

Tests with the same flags share a server (a start is ~15 s of CPU): each begins with `fresh(server)`,
which brings it back to how it started, and counts loads and evictions from there."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import time

import httpx
import openai
import pytest

from modules.generation import GenerationRequest
from modules.presets import Preset

LLAMA, GPT2 = "parlour-micro", "parlour-micro-gpt2"
PROMPT = "def main():"
HELLO = [{"role": "user", "content": "Hello there"}]
GREEDY = {"temperature": 0, "extra_body": {"ban_eos_token": True}}


@pytest.fixture(scope="module")
def expected(models_dir, tmp_path_factory) -> dict:
    """What each model answers, computed here: completions of PROMPT (12 tokens) and replies to HELLO."""
    from modules.app import App
    from modules.settings import Settings
    from tests.conftest import ROOT

    tmp = tmp_path_factory.mktemp("reference")
    app = App.build(Settings(models_dir=models_dir, user_data=tmp, presets_dir=ROOT / "presets",
                             settings=tmp / "s.yaml", max_loaded_models=2))
    preset = Preset(temperature=0.0, max_new_tokens=12, ban_eos_token=True)
    out = {}
    for name in (LLAMA, GPT2):
        out[name] = list(app.pipeline.stream(GenerationRequest(preset=preset, prompt=PROMPT, model=name)))[-1].text
        out[name, "chat"] = list(app.pipeline.stream(GenerationRequest(preset=preset, messages=HELLO,
                                                                       model=name)))[-1].text
    assert out[LLAMA] != out[GPT2]  # the two models tell each other apart
    app.models.unload()
    return out


def copy_models(models_dir, folder):
    """A models/ folder of our own with the two micro models (tests add saved settings or a broken model)."""
    for name in (LLAMA, GPT2):
        shutil.copytree(models_dir / name, folder / name)
    return folder


@pytest.fixture()
def models(models_dir, tmp_path):
    return copy_models(models_dir, tmp_path / "models")


@pytest.fixture(scope="module")
def one_model(module_server, models_dir, tmp_path_factory):
    """A server that keeps one model loaded. Its Llama's saved settings give it a context far beyond any
    reply here (Llama's positions stretch), so the stream of test_no_model_is_evicted_under_a_running_stream
    runs until that test closes it; the short replies of the other tests are the same with it."""
    models = copy_models(models_dir, tmp_path_factory.mktemp("models"))
    (models / "config-user.yaml").write_text(f"{LLAMA}:\n  loader: transformers\n  options: {{context_length: 1000000}}\n")
    return module_server("--max-loaded-models", "1", models=models)


@pytest.fixture(scope="module")
def two_models(module_server, models_dir, tmp_path_factory):
    """A server that keeps two models loaded, with a broken model beside the two micro ones."""
    models = copy_models(models_dir, tmp_path_factory.mktemp("models"))
    broken = models / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}))
    (broken / "model.safetensors").write_bytes(b"not really safetensors")
    return module_server("--max-loaded-models", "2", models=models)


def client_for(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def internal(server) -> dict:
    return httpx.get(server.url + "/v1/internal/models", timeout=30).json()


def states(server) -> dict:
    return internal(server)["models"]


def wait_for(server, predicate, timeout: float = 300.0, read=states) -> dict:
    """Poll the server's model states (or another `read` of it) until `predicate` holds."""
    deadline = time.monotonic() + timeout
    while True:
        now = read(server)
        if predicate(now):
            return now
        assert time.monotonic() < deadline, f"the models never reached that state: {now}"
        time.sleep(0.05)


def quiet(models: dict) -> bool:
    return all(m["running"] == m["waiting"] == 0 and m["state"] != "loading" for m in models.values())


def fresh(server) -> dict:
    """Bring a shared server back to how it started: the Llama loaded and the default model, no other
    model loaded, nothing running or waiting. Returns the model states then (tests count from there)."""
    wait_for(server, quiet)
    for name, model in states(server).items():
        if name != LLAMA and model["state"] == "loaded":
            assert httpx.post(server.url + "/v1/internal/model/unload", json={"model_name": name},
                              timeout=300).status_code == 200
    now = internal(server)
    if now["models"][LLAMA]["state"] != "loaded" or now["default"] != LLAMA:
        assert httpx.post(server.url + "/v1/internal/model/load", json={"model_name": LLAMA},
                          timeout=300).status_code == 200
    return wait_for(server, lambda now: now["default"] == LLAMA and quiet(now["models"])
                    and {n for n, m in now["models"].items() if m["state"] == "loaded"} == {LLAMA},
                    read=internal)["models"]


def counted(before: dict, after: dict, name: str) -> tuple[int, int]:
    """(loads, evictions) of the model `name` between two readings of `states`."""
    old = before.get(name, {"loads": 0, "evictions": 0})  # (a model the server has not seen yet)
    return after[name]["loads"] - old["loads"], after[name]["evictions"] - old["evictions"]


def complete(client: openai.OpenAI, model: str) -> str:
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, **GREEDY)
    assert out.model == model
    return out.choices[0].text


@pytest.mark.parametrize("budget", [1, 2])
def test_two_models_requested_alternately_load_and_evict_as_the_budget_says(budget, expected, request):
    server = request.getfixturevalue({1: "one_model", 2: "two_models"}[budget])
    start = fresh(server)  # the Llama loaded
    client = client_for(server)
    for name in (LLAMA, GPT2, LLAMA, GPT2):
        assert complete(client, name) == expected[name]
    seen = states(server)
    if budget == 1:  # each switch loads the other model and unloads the one before
        assert counted(start, seen, LLAMA) == (1, 2)
        assert counted(start, seen, GPT2) == (2, 1)
        assert [m.id for m in client.models.list().data if m.state == "loaded"] == [GPT2]
    else:  # both stay
        assert counted(start, seen, LLAMA) == (0, 0)
        assert counted(start, seen, GPT2) == (1, 0)
        assert {m.id for m in client.models.list().data if m.state == "loaded"} == {LLAMA, GPT2}
    assert client.models.retrieve(GPT2).context_length == 2048
    assert server.health()["default_model"] == LLAMA  # just-in-time loads leave the default model alone


def test_no_model_is_evicted_under_a_running_stream(one_model, expected):
    server = one_model  # its Llama's context is far beyond this reply: the stream runs until the test closes it
    start = fresh(server)
    client = client_for(server)
    # (`with`: the stream is closed even when an assertion fails, so it does not hold the shared server)
    with client.completions.create(model=LLAMA, prompt=PROMPT, max_tokens=32768, stream=True, **GREEDY) as stream:
        chunks = iter(stream)
        text = ""
        while len(text) < len(expected[LLAMA]):
            text += next(chunks).choices[0].text
        assert text.startswith(expected[LLAMA])
        # One model allowed, and the Llama is streaming: the GPT-2 loads beside it and answers; the Llama is
        # unloaded only once its stream ends.
        assert complete(client, GPT2) == expected[GPT2]
        seen = states(server)
        assert seen[LLAMA]["state"] == "loaded" and seen[LLAMA]["running"] == 1
        assert counted(start, seen, LLAMA)[1] == 0
        assert next(chunks).choices[0].text is not None  # still streaming
    # the client hung up (the `with` closed the stream): the reply is cancelled and the Llama drains
    seen = wait_for(server, lambda s: s[LLAMA]["state"] == "available")
    assert counted(start, seen, LLAMA)[1] == 1 and seen[GPT2]["state"] == "loaded"
    assert complete(client, LLAMA) == expected[LLAMA]  # and it comes back on request


def test_concurrent_first_requests_for_one_model_load_it_once(one_model, expected):
    server = one_model
    start = fresh(server)  # the GPT-2 is not loaded: the four requests all find it so
    client = client_for(server)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda _: complete(client, GPT2), range(4)))
    assert texts == [expected[GPT2]] * 4
    seen = states(server)
    assert counted(start, seen, GPT2)[0] == 1 and counted(start, seen, LLAMA)[1] == 1


def test_a_failed_load_tells_every_request_why_and_keeps_the_loaded_models(two_models, expected):
    server = two_models  # its models/ has a model "broken" that cannot load
    start = fresh(server)
    client = client_for(server)

    def ask(stream: bool) -> str:
        try:
            if stream:  # the stream starts at once (": loading model"); the failure arrives as its error event
                for _ in client.completions.create(model="broken", prompt=PROMPT, max_tokens=4, stream=True):
                    pass
            else:
                client.completions.create(model="broken", prompt=PROMPT, max_tokens=4)
        except openai.APIError as exc:  # (a status error's message has "Error code: 400 - " before it)
            return exc.body["message"] if isinstance(exc.body, dict) else exc.message
        raise AssertionError("the broken model answered")

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        reasons = list(pool.map(ask, [False, False, True, True]))
    first = reasons[0]
    assert first.startswith("broken: ") and "\n" not in first
    assert reasons == [first] * 4
    seen = states(server)
    assert seen[LLAMA]["state"] == "loaded" and counted(start, seen, LLAMA)[1] == 0
    assert seen["broken"]["failures"] > start.get("broken", {"failures": 0})["failures"]
    assert complete(client, LLAMA) == expected[LLAMA]
    with pytest.raises(openai.BadRequestError, match="broken: "):  # a 400 naming the model's own problem
        client.completions.create(model="broken", prompt=PROMPT, max_tokens=4)


def test_aliases_states_unknown_names_and_the_loading_stream(models, expected, start_server):
    server = start_server("--models-dir", str(models), "--model", LLAMA, "--max-loaded-models", "2",
                          "--model-alias", "gpt-4o-mini=parlour-micro-gpt2", "--model-alias", "house=parlour-micro")
    client = client_for(server)
    listed = {m.id: m for m in client.models.list().data}
    assert set(listed) == {LLAMA, GPT2, "gpt-4o-mini", "house"}
    assert (listed[LLAMA].state, listed[GPT2].state) == ("loaded", "available")
    assert (listed["gpt-4o-mini"].alias_of, listed["gpt-4o-mini"].state) == (GPT2, "available")
    out = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=12, **GREEDY)
    assert out.model == GPT2 and out.choices[0].message.content == expected[GPT2, "chat"]
    assert client.models.retrieve("gpt-4o-mini").state == "loaded"
    with pytest.raises(openai.NotFoundError, match="the model 'gpt-5' does not exist"):
        client.chat.completions.create(model="gpt-5", messages=HELLO, max_tokens=4)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-5")

    # A streaming request for a model that is not loaded gets the SSE stream at once: a comment while it
    # loads, then the reply.
    assert httpx.post(server.url + "/v1/internal/model/unload", json={"model_name": "gpt-4o-mini"}).status_code == 200
    assert states(server)[GPT2]["state"] == "available" and states(server)[LLAMA]["state"] == "loaded"
    body = {"model": "gpt-4o-mini", "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "ban_eos_token": True,
            "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=300) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[0] == ": loading model gpt-4o-mini"
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in data) == expected[GPT2] and lines[-1] == "data: [DONE]"


def test_a_model_that_cannot_fit_is_refused_naming_the_budget(models, start_server):
    sizes = {name: (models / name / "model.safetensors").stat().st_size / 2**20 for name in (LLAMA, GPT2)}
    assert sizes[GPT2] > sizes[LLAMA]
    budget = f"{(sizes[LLAMA] + sizes[GPT2]) / 2:.3f}MiB"  # room for the Llama, not for the GPT-2
    server = start_server("--models-dir", str(models), "--model", LLAMA, "--cpu-memory-budget", budget)
    client = client_for(server)
    with pytest.raises(openai.BadRequestError, match="--cpu-memory-budget") as refused:
        client.completions.create(model=GPT2, prompt=PROMPT, max_tokens=4)
    assert refused.value.code == "model_too_large" and GPT2 in refused.value.message
    load = httpx.post(server.url + "/v1/internal/model/load", json={"model_name": GPT2}, timeout=60)
    assert load.status_code == 400 and load.json()["error"]["code"] == "model_too_large"
    assert states(server)[LLAMA]["state"] == "loaded"  # nothing was unloaded for it


def test_list_loaded_only_keeps_the_one_model_list(make_app):
    from fastapi.testclient import TestClient

    from modules.api import build_api

    app = make_app(list_loaded_only=True)
    app.models.load(LLAMA)
    with TestClient(build_api(app)) as api:
        assert [m["id"] for m in api.get("/models").json()["data"]] == [LLAMA]
        app.models.unload()
        assert api.get("/models").json()["data"] == []


def test_a_remote_engines_models_are_listed_and_load_on_request(one_model, make_app, expected):
    from fastapi.testclient import TestClient

    from modules.api import build_api

    engine = one_model
    fresh(engine)
    app = make_app(remote_url=engine.url + "/v1")
    with TestClient(build_api(app)) as api:
        states_now = {m["id"]: m["state"] for m in api.get("/models").json()["data"]}
        assert states_now["remote:" + GPT2] == "available" and states_now[LLAMA] == "available"
        out = api.post("/completions", json={"model": "remote:" + GPT2, "prompt": PROMPT, "max_tokens": 12,
                                             "temperature": 0, "ban_eos_token": True}).json()
        assert out["model"] == "remote:" + GPT2 and out["choices"][0]["text"] == expected[GPT2]
        assert {m["id"]: m["state"] for m in api.get("/models").json()["data"]}["remote:" + GPT2] == "loaded"
    app.models.unload()
