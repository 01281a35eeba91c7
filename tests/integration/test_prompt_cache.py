"""The prompt cache on the real micro models, through the batch engine (--batch-size 4) and the
generate() path (--batch-size 1): the same greedy text as without it, only new tokens read, and no
reuse where the keys/values would be wrong (another model, an adapter) or would cross users."""

from __future__ import annotations

import threading

import pytest

from modules.generation import GenerationRequest
from modules.loaders.transformers import TransformersBackend
from modules.loaders.options import TransformersOptions
from modules.presets import Preset
from tests.conftest import DEMO_DIR

GREEDY = Preset(temperature=0.0, max_new_tokens=12, ban_eos_token=True)
EXCHANGES = [("Hello", "Hello! How can I help you today?"), ("What is the capital of France?", "Paris."),
             ("Tell me about the sea.", "The sea is large and salty."), ("Who are you?", "A small demo assistant.")]


def turn(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


HISTORY = "".join(turn(q) + f"{a}<|im_end|>\n" for q, a in EXCHANGES * 2) + turn("And the moon?")


def reply(backend, prompt: str, scope: str = "user:a", preset: Preset = GREEDY) -> str:
    return "".join(d.text for d in backend.stream(prompt, preset, threading.Event(), cache_scope=scope))


def reused(backend) -> int:
    return backend.prefix_cache.stats()["reused_tokens"]


@pytest.fixture(scope="module", params=[("parlour-micro", 1), ("parlour-micro", 4), ("parlour-micro-gpt2", 4),
                                        ("demo", 1), ("demo", 4)],
                ids=["micro-generate", "micro-batched", "gpt2-batched", "demo-generate", "demo-batched"])
def pair(request, models_dir):
    """The same model with the prompt cache and without it. The demo model is trained: its replies depend
    on every position, so keys/values at a wrong place would change them (the micro ones barely care)."""
    name, batch = request.param
    path = DEMO_DIR if name == "demo" else models_dir / name
    cached = TransformersBackend(path, batch_size=batch)
    plain = TransformersBackend(path, TransformersOptions(prompt_cache_mib=0), batch_size=batch)
    assert cached.prefix_cache is not None and plain.prefix_cache is None
    yield cached, plain
    cached.unload()
    plain.unload()


def test_next_turns_read_only_new_tokens_and_say_the_same(pair):
    cached, plain = pair
    prompt = HISTORY
    for n in range(3):  # a chat: each prompt is the last one, its reply and a new message
        before = reused(cached)
        text = reply(cached, prompt)
        assert text == reply(plain, prompt), n
        if n:
            # everything up to the last reply came from the cache (a token or two where the reply's text
            # tokenizes differently from the tokens generated may be read again)
            assert reused(cached) - before >= len(cached.tokenize(previous)) - 2
        previous = prompt
        prompt = prompt + text + "<|im_end|>\n" + turn(["Why?", "Tell me more.", "Thanks!"][n])


def test_regenerate_branches_and_switching_between_them(pair):
    cached, plain = pair
    branches = [HISTORY + "The moon is", HISTORY + "It is far", HISTORY + "The moon is bright"]
    for prompt in branches + branches[::-1]:  # each one again: a regenerate, and a switch back
        assert reply(cached, prompt, "user:b") == reply(plain, prompt, "user:b"), prompt
    assert cached.prefix_cache.sequences("user:b") >= 2  # branches kept side by side
    before = reused(cached)
    reply(cached, branches[1], "user:b")
    assert reused(cached) - before == len(cached.tokenize(branches[1])) - 1


def test_a_changed_beginning_is_not_reused(pair):
    """Truncation drops the oldest tokens: what follows sits at other positions, so nothing is reused."""
    cached, plain = pair
    prompt = HISTORY + "\n# truncated\n"
    reply(cached, prompt, "user:c")
    ids = cached.tokenize(prompt)
    shorter = cached.detokenize(ids[40:])
    before = reused(cached)
    assert reply(cached, shorter, "user:c") == reply(plain, shorter, "user:c")
    assert reused(cached) == before


def test_users_do_not_share_a_cache(pair):
    cached, _ = pair
    prompt = HISTORY + "\n# alice's\n"
    reply(cached, prompt, "user:alice")
    before = reused(cached)
    reply(cached, prompt, "user:bob")
    assert reused(cached) == before
    reply(cached, prompt, "user:alice")
    assert reused(cached) > before


def test_requests_through_the_pipeline_are_scoped_by_user(make_app):
    app = make_app(batch_size=1)
    backend = app.models.load("parlour-micro")
    prompt = HISTORY + "\n# pipeline\n"
    run = lambda user: list(app.pipeline.stream(GenerationRequest(preset=GREEDY, prompt=prompt, user=user)))[-1]
    run("alice")
    before = reused(backend)
    run("bob")
    assert reused(backend) == before
    run("alice")
    assert reused(backend) - before == len(backend.tokenize(prompt)) - 1
    app.models.unload()


def test_an_adapter_change_drops_the_cache(models_dir, tmp_path):
    """Keys/values belong to the weights that computed them: after a LoRA change the reply must be the
    adapter's own, which stale keys/values from the base model would change."""
    from tests.integration.test_model_loading import make_lora

    make_lora(models_dir / "parlour-micro", tmp_path / "noisy")
    prompt = HISTORY + "\n# adapter\n"
    fresh = TransformersBackend(models_dir / "parlour-micro", TransformersOptions(prompt_cache_mib=0))
    fresh.set_loras([tmp_path / "noisy"])
    expected = reply(fresh, prompt)
    fresh.unload()
    for batch in (1, 4):
        backend = TransformersBackend(models_dir / "parlour-micro", batch_size=batch)
        base = reply(backend, prompt)
        old = backend.prefix_cache
        backend.set_loras([tmp_path / "noisy"])
        assert backend.prefix_cache is not old and backend.prefix_cache.stats()["bytes"] == 0
        assert reply(backend, prompt) == expected != base
        assert reused(backend) == 0
        backend.unload()


def test_another_model_starts_with_an_empty_cache(make_app):
    app = make_app()
    prompt = HISTORY + "\n# models\n"
    request = lambda: GenerationRequest(preset=GREEDY, prompt=prompt)
    first = app.models.load("parlour-micro")
    list(app.pipeline.stream(request()))
    assert reused(first) == 0 and first.prefix_cache.stats()["bytes"] > 0
    app.models.load("parlour-micro-gpt2")
    list(app.pipeline.stream(request()))
    assert app.models.current() is not first and reused(app.models.current()) == 0
    app.models.unload()


def test_a_small_budget_keeps_the_most_recent_chats(models_dir):
    """1 MiB holds about 2,000 tokens of the micro model: three long chats do not fit, the oldest goes."""
    backend = TransformersBackend(models_dir / "parlour-micro", TransformersOptions(prompt_cache_mib=1),
                                  batch_size=4)
    chats = [f"{name} = 1\n" + HISTORY * 4 for name in ("alpha", "beta", "gamma")]  # ~800 tokens each
    for chat in chats:
        reply(backend, chat)
    stats = backend.prefix_cache.stats()
    assert stats["bytes"] <= 2**20 and stats["evicted_tokens"] > 0
    before = reused(backend)
    reply(backend, chats[2])  # the newest is kept whole
    assert reused(backend) - before == len(backend.tokenize(chats[2])) - 1
    before = reused(backend)
    reply(backend, chats[0])  # the oldest was evicted
    assert reused(backend) == before
    backend.unload()


def test_continue_reads_only_the_added_reply(pair):
    cached, plain = pair
    prompt = HISTORY + "\n# continue\n"
    first = reply(cached, prompt)
    before = reused(cached)
    assert reply(cached, prompt + first) == reply(plain, prompt + first)  # "continue": the reply so far, extended
    assert reused(cached) - before >= len(cached.tokenize(prompt)) - 2


def test_api_callers_share_one_partition_and_a_repeated_system_prompt_is_read_once(start_server, models_dir):
    """Through a real server: the same long system prompt from two API clients (different `user` fields) is
    read once; the reply is the same both times."""
    import httpx

    server = start_server("--models-dir", str(models_dir), "--model", "parlour-micro")
    system = "You are a careful assistant. " + " ".join(f"Rule {i}: be brief." for i in range(60))
    body = lambda user, question: {"model": "parlour-micro", "max_tokens": 8, "temperature": 0, "user": user,
                                   "messages": [{"role": "system", "content": system},
                                                {"role": "user", "content": question}]}
    info = lambda: httpx.get(server.url + "/v1/internal/model/info").json()["info"]["prompt_cache"]
    url = server.url + "/v1/chat/completions"
    first = httpx.post(url, json=body("alice", "Hello"), timeout=60).json()["choices"][0]["message"]["content"]
    before = info()["reused_tokens"]
    httpx.post(url, json=body("bob", "Something else"), timeout=60).raise_for_status()
    shared = info()["reused_tokens"] - before
    assert shared >= 300  # the system prompt (~400 tokens of the micro tokenizer) came from the cache
    again = httpx.post(url, json=body("carol", "Hello"), timeout=60).json()["choices"][0]["message"]["content"]
    assert again == first
