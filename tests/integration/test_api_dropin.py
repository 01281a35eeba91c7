"""What clients written for OpenAI's completions and for text-generation-webui send, against a real server
on the micro model: token prompts, scoring with max_tokens 0, logprobs that count what usage counts (the
ending EOS too), prompts cut to fit the way text-generation-webui cuts them, streamed logprobs that
belong to their chunk, and SillyTavern's own request body."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.conftest import micro_server
from tests.unit.test_sampler_forms import sillytavern_body

MODEL = "parlour-micro"


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    srv = micro_server(tmp_path_factory.mktemp("dropin"), models_dir)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url + "/v1", timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def eos(micro_backend) -> int:
    return micro_backend.tokenizer.convert_tokens_to_ids("<|im_end|>")


def complete(http, **body):
    response = http.post("/completions", json=body)
    assert response.status_code == 200, response.text
    return response


def reference_logprobs(backend, ids: list[int]) -> list[float]:
    rows = backend.token_logprobs(ids)
    return [float(rows[k - 1][t]) for k, t in enumerate(ids) if k]


# -- prompts as OpenAI allows them ---------------------------------------------------------------------

def test_token_prompts_are_read_exactly(http, micro_backend):
    # ids no tokenizer would produce for their text (one character at a time): re-tokenizing the text
    # would score other tokens, so this fails unless the ids are used as given
    ids = [micro_backend.tokenize(ch)[0] for ch in "import os"]
    assert micro_backend.tokenize(micro_backend.detokenize(ids)) != ids
    for prompt in (ids, [ids]):
        out = complete(http, prompt=prompt, max_tokens=1, echo=True, logprobs=1, temperature=0).json()
        lp = out["choices"][0]["logprobs"]
        assert lp["token_logprobs"][0] is None
        assert lp["token_logprobs"][1:len(ids)] == pytest.approx(reference_logprobs(micro_backend, ids), abs=1e-4)
        assert out["usage"]["prompt_tokens"] == len(ids)
        assert len(lp["tokens"]) == out["usage"]["total_tokens"] == len(ids) + 1


def test_several_prompts_each_get_their_choices(http):
    out = complete(http, prompt=[[30, 40, 50], [60, 70]], max_tokens=2, temperature=0, n=2, echo=True).json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    texts = [c["text"] for c in out["choices"]]
    assert texts[0] == texts[1] and texts[2] == texts[3] and texts[0] != texts[2]
    out = complete(http, prompt=["def main():", "import"], max_tokens=2, temperature=0).json()
    assert len(out["choices"]) == 2


def test_max_tokens_zero_with_echo_scores_the_prompt(http, micro_backend):
    ids = micro_backend.tokenize("def main():\n    return 0")
    out = complete(http, prompt=[ids], max_tokens=0, echo=True, logprobs=2).json()
    choice, lp = out["choices"][0], out["choices"][0]["logprobs"]
    assert choice["text"] == "def main():\n    return 0" and choice["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    assert len(lp["tokens"]) == len(ids)
    assert lp["token_logprobs"][1:] == pytest.approx(reference_logprobs(micro_backend, ids), abs=1e-4)
    assert all(len(top) == 2 for top in lp["top_logprobs"][1:])
    text = complete(http, prompt="def main():", max_tokens=0, echo=True, logprobs=0).json()
    assert text["usage"]["completion_tokens"] == 0
    refused = http.post("/completions", json={"prompt": "x", "max_tokens": 0})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tokens"


def test_bad_token_prompts_are_400(http):
    for prompt, param in ([[10**7]], "prompt"), ([], "prompt"), ([[]], "prompt"):
        response = http.post("/completions", json={"prompt": prompt, "max_tokens": 1})
        assert response.status_code == 400 and response.json()["error"]["param"] == param, prompt


# -- logprobs count what usage counts ---------------------------------------------------------------------

@pytest.mark.parametrize("echo", [True, False])
def test_a_reply_ending_on_eos_lists_it(http, eos, echo):
    out = complete(http, prompt="def main():", max_tokens=4, echo=echo, logprobs=1, temperature=0,
                   logit_bias={str(eos): 100}).json()
    lp, usage = out["choices"][0]["logprobs"], out["usage"]
    assert lp["tokens"][-1] == "<|im_end|>" and out["choices"][0]["finish_reason"] == "stop"
    assert len(lp["tokens"]) == (usage["total_tokens"] if echo else usage["completion_tokens"])
    assert usage["completion_tokens"] == 1


@pytest.mark.parametrize("echo", [True, False])
def test_entries_match_usage_for_a_longer_reply(http, echo):
    out = complete(http, prompt="class Foo:", max_tokens=24, echo=echo, logprobs=1, temperature=0.9, seed=3).json()
    lp, usage = out["choices"][0]["logprobs"], out["usage"]
    assert len(lp["tokens"]) == (usage["total_tokens"] if echo else usage["completion_tokens"])
    assert "".join(lp["tokens"]) == out["choices"][0]["text"] or lp["tokens"][-1].startswith("<|")


def test_streamed_logprobs_belong_to_their_chunk(http):
    body = {"prompt": "def main():", "max_tokens": 16, "logprobs": 2, "temperature": 0, "ban_eos_token": True}
    whole = complete(http, **body).json()["choices"][0]
    chunks = []
    with http.stream("POST", "/completions", json={**body, "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:])["choices"][0])
    texts = [c["text"] for c in chunks]
    assert "".join(texts) == whole["text"]
    streamed = [(c["text"], c["logprobs"]["tokens"]) for c in chunks if c["logprobs"] and c["logprobs"]["tokens"]]
    for text, tokens in streamed:  # one token per chunk, and the chunk's text is that token's
        assert tokens == [text]
    assert [t for _, ts in streamed for t in ts] == whole["logprobs"]["tokens"]
    values = [v for c in chunks if c["logprobs"] for v in c["logprobs"]["token_logprobs"]]
    assert values == pytest.approx(whole["logprobs"]["token_logprobs"], abs=1e-4)


# -- prompts longer than the context ----------------------------------------------------------------------

LONG = " ".join(f"word{i}" for i in range(1500))  # about 9000 tokens; the micro model reads 2048


def test_truncation_length_cuts_the_prompt_and_reports_it(http):
    response = complete(http, prompt=LONG, max_tokens=8, truncation_length=4096)
    dropped = int(response.headers["x-parlour-truncated-prompt-tokens"])
    usage = response.json()["usage"]
    assert dropped > 5000 and usage["truncated_prompt_tokens"] == dropped
    assert usage["prompt_tokens"] + 8 <= 2048  # what was kept leaves the reply its room
    small = complete(http, prompt=LONG, max_tokens=8, truncation_length=300)  # tgw: cut to 300 - 8
    assert small.json()["usage"]["prompt_tokens"] <= 292
    plain = http.post("/completions", json={"prompt": LONG, "max_tokens": 8})  # a pure OpenAI request
    assert plain.status_code == 400 and plain.json()["error"]["code"] == "context_length_exceeded"
    assert "truncation_length" in plain.json()["error"]["message"]


def test_chat_with_truncation_length_drops_the_oldest_turns(http):
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(12):
        messages += [{"role": "user", "content": LONG[i * 900:(i + 1) * 900]},
                     {"role": "assistant", "content": "ok"}]
    messages.append({"role": "user", "content": "And now?"})
    response = http.post("/chat/completions", json={"messages": messages, "max_tokens": 4, "truncation_length": 8192})
    assert response.status_code == 200, response.text
    assert int(response.headers["x-parlour-truncated-prompt-tokens"]) > 0
    assert http.post("/chat/completions", json={"messages": messages, "max_tokens": 4}).status_code == 400


# -- SillyTavern's connector, with its exact body ---------------------------------------------------------

def test_sillytavern_text_generation_webui_body_streams_with_token_probabilities(http, server):
    chunks = []
    # SillyTavern's Seed field set: its default (random) can draw the end of the text first, and then no
    # token carries probabilities to look at
    with http.stream("POST", "/completions", json=sillytavern_body(seed=7)) as response:
        assert response.status_code == 200
        assert "penalty_alpha" in response.headers["x-parlour-ignored-fields"]
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:])["choices"][0])
    assert chunks[-1]["finish_reason"] in ("stop", "length")
    with_probs = [c for c in chunks if c["text"]]
    assert with_probs and all(c["logprobs"]["top_logprobs"] and len(c["logprobs"]["top_logprobs"][0]) == 10
                              for c in with_probs)
    # its start-up calls
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["id"] == MODEL
    assert httpx.get(server.url + "/v1/internal/model/info").json()["model_name"] == MODEL
    assert httpx.post(server.url + "/v1/internal/encode", json={"text": "Hello"}).json()["length"] >= 1


def test_sillytavern_long_chat_is_cut_not_refused(http):
    response = http.post("/completions", json=sillytavern_body(prompt=LONG, stream=False, logprobs=None))
    assert response.status_code == 200 and int(response.headers["x-parlour-truncated-prompt-tokens"]) > 0


def test_openai_client_sends_token_prompts_too(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    out = client.completions.create(model=MODEL, prompt=[[30, 40, 50]], max_tokens=0, echo=True, logprobs=1)
    assert len(out.choices[0].logprobs.tokens) == 3 and out.usage.prompt_tokens == 3


def test_hanging_up_on_a_stream_with_logprobs_ends_the_generation(server):
    # SillyTavern's Stop with Token Probabilities on: the model must stop and the caller be forgotten
    # (the per-token scoring awaits kept the stream's generators alive until the garbage collector ran)
    internal = server.url + "/v1/internal/health"
    before = httpx.get(internal).json()
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", server.url + "/v1/completions", json={
                "prompt": "x", "max_tokens": 1900, "temperature": 0, "ban_eos_token": True, "stream": True,
                "logprobs": 10}) as response:
            lines = response.iter_lines()
            assert sum(1 for _, line in zip(range(6), lines) if line.startswith("data:")) >= 3
    after = server.wait_until(lambda h: h["active"] == 0)
    assert after["tokens"] - before["tokens"] < 1900, "the model went on generating after the client left"
    for _ in range(600):  # the route's own cleanup, observed through the server's counters
        now = httpx.get(internal).json()
        if now["api_running"] == 0:
            break
        time.sleep(0.05)
    assert now["api_running"] == 0 and now["api_disconnects"] > before["api_disconnects"]
