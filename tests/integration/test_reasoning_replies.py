"""Reasoning replies end to end on the demo model (it thinks before it answers, see modules/demo_model.py):
the pipeline's parts, the store, the OpenAI API with the official client (streaming and not), a remote
engine that sends reasoning apart, and what the next prompt gets back."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from modules.chat import PromptOptions
from modules.conversation import ChatView, Setup
from modules.presets import Preset
from modules.turns import ReasoningPart, TextPart
from tests.conftest import DEMO_DIR, ROOT

pytestmark = pytest.mark.demo
GREEDY = Preset(temperature=0.0, max_new_tokens=80)
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    assert (DEMO_DIR / "config.json").exists(), "the demo model is missing: ./test.sh builds it"
    return DEMO_DIR.parent


@pytest.fixture()
def app(make_app, demo_dir):
    app = make_app(models_dir=demo_dir)
    app.models.load("parlour-demo")
    return app


def reply(app, preset=GREEDY, **template_vars):
    from modules.chat import request_for

    request = request_for(HELLO, PromptOptions(mode="instruct"), preset, template_vars=template_vars)
    return list(app.pipeline.stream(request))


def test_the_demo_model_thinks_then_greets(app):
    updates = reply(app)
    final = updates[-1]
    assert final.finish_reason == "stop"
    assert final.reasoning and "greet" in final.reasoning  # its thought
    words = final.text.split()
    assert 2 <= len(words) <= 20 and any(w.strip("!,.").lower() in {"hello", "hi", "hey", "help"} for w in words)
    assert "<think>" not in final.text and "</think>" not in final.text
    thought, answer = final.parts
    assert isinstance(thought, ReasoningPart) and thought.complete and thought.tokens > 0
    assert isinstance(answer, TextPart) and answer.text == final.text
    # while it streamed, the first updates were thinking and the last ones were not
    assert updates[1].thinking and not final.thinking


def test_thinking_switched_off_answers_at_once(app):
    final = reply(app, enable_thinking=False)[-1]
    assert final.reasoning == "" and final.text.strip() and final.parts == (TextPart(final.text),)


def test_a_reply_cut_inside_its_thought_is_unfinished_thinking(app):
    final = reply(app, Preset(temperature=0.0, max_new_tokens=3))[-1]
    assert final.finish_reason == "length" and final.text == ""
    assert isinstance(final.parts[0], ReasoningPart) and not final.parts[0].complete


def test_a_constrained_answer_that_writes_a_marker_keeps_it_as_its_own_text(app):
    # the demo model thinks freely, then the grammar holds: its JSON string spells "<think>" (the markers
    # the model knows best), which is the answer's text, not a second thought that cut the JSON short
    grammar = 'root ::= "{\\"note\\": \\"<think>" [a-z ]{1,30} "</think>\\"}"'
    preset = Preset(temperature=0.0, max_new_tokens=200, grammar_string=grammar)
    final = reply(app, preset)[-1]
    assert final.reasoning and "greet" in final.reasoning  # the free thought came first, split off
    assert final.text.startswith('{"note": "<think>') and final.text.endswith('</think>"}'), final.text
    assert json.loads(final.text)["note"].startswith("<think>")
    assert [type(p) for p in final.parts] == [ReasoningPart, TextPart]


def test_the_grammar_sees_added_tokens_as_the_text_they_spell_and_special_ones_never(app):
    from modules.constraints import constraint_of, unpack

    backend = app.models.current()
    tokenizer = backend.tokenizer
    matcher = backend.constraint_compiler().matcher(constraint_of(Preset(grammar_string=(ROOT / "grammars" / "json.gbnf")
                                                              .read_text())))
    assert matcher.consume_tokens(tokenizer.encode('{"a": "x', add_special_tokens=False))
    allowed = unpack(matcher.compute_bitmask())
    think, end = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    assert allowed[think] and allowed[end]  # inside a JSON string: text like any other ...
    assert matcher.consume_tokens([think]) and not matcher.is_error()  # ... and taken as such
    assert not any(allowed[i] for i in tokenizer.all_special_ids)  # <|im_end|> and the like: never text


def test_reasoning_is_saved_and_not_sent_back_unless_kept(app):
    setup = Setup(PromptOptions(mode="instruct"), GREEDY)
    step = None
    for step in app.chats.send("ann", ChatView(), "Hello", setup):
        pass
    saved = app.store.path("ann", step.view.chat_id)[-1]
    thought = saved.as_turn().reasoning
    assert thought and saved.content == step.turns[-1].text
    backend = app.models.current()
    history = app.chats.turns("ann", step.view) + [type(step.turns[-1]).of("user", "Thanks")]
    from modules.chat import next_prompt

    plain = next_prompt(app, history, PromptOptions(mode="instruct"), GREEDY).text
    kept = next_prompt(app, history, PromptOptions(mode="instruct", keep_reasoning=True), GREEDY).text
    assert thought not in plain and saved.content in plain
    assert f"<think>{thought}</think>" in kept  # inline: the demo's template does not read reasoning_content
    exported = app.store.export_chat("ann", step.view.chat_id)
    copy = app.store.import_chat("ann", exported)
    assert app.store.path("ann", copy)[-1].as_turn().reasoning == thought
    assert backend.reasoning_format.start == "<think>"


@pytest.fixture(scope="module")
def server(module_server, demo_dir):
    return module_server(models=demo_dir, model="parlour-demo")


def test_the_api_returns_reasoning_content_streaming_and_not(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
    raw = client.chat.completions.with_raw_response.create(model="parlour-demo", messages=HELLO, temperature=0,
                                                            max_tokens=80)
    message = json.loads(raw.text)["choices"][0]["message"]
    assert message["reasoning_content"] and "greet" in message["reasoning_content"]
    assert message["content"] and "<think>" not in message["content"]
    assert raw.parse().choices[0].message.model_extra["reasoning_content"] == message["reasoning_content"]

    thought, content, order = "", "", []
    for chunk in client.chat.completions.create(model="parlour-demo", messages=HELLO, temperature=0, max_tokens=80,
                                                stream=True):
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None:
            continue
        if (delta.model_extra or {}).get("reasoning_content"):
            thought += delta.model_extra["reasoning_content"]
            order.append("reasoning")
        if delta.content:
            content += delta.content
            order.append("content")
    assert (thought, content) == (message["reasoning_content"], message["content"])
    assert order.index("content") > max(i for i, k in enumerate(order) if k == "reasoning")  # reasoning first

    off = client.chat.completions.create(model="parlour-demo", messages=HELLO, temperature=0, max_tokens=80,
                                         extra_body={"enable_thinking": False})
    assert not (off.choices[0].message.model_extra or {}).get("reasoning_content")
    assert off.choices[0].message.content


def test_the_completions_route_stays_raw_text(server):
    body = {"model": "parlour-demo", "prompt": "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n",
            "max_tokens": 60, "temperature": 0}
    choice = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]
    assert "</think>" in choice["text"] and "reasoning_content" not in choice


def test_a_remote_engines_reasoning_arrives_as_reasoning(server, make_app):
    """Another Parlour as the remote engine: it sends reasoning_content apart; this one keeps it apart."""
    app = make_app(remote_url=server.url + "/v1")
    app.models.load("remote:parlour-demo", options={"base_url": server.url + "/v1"})
    final = reply(app)[-1]
    assert final.reasoning and "greet" in final.reasoning and "<think>" not in final.text and final.text.strip()
