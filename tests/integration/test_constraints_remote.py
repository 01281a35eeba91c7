"""Constraints through the remote loader: passed on to the engine (another Parlour process), which applies them."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from modules.constraints import ConstraintError, check
from modules.generation import GenerationRequest
from modules.presets import Preset
from tests.constraint_cases import SCHEMAS

NESTED = SCHEMAS["nested_objects"]


def final(app, preset: Preset, **request):
    return list(app.pipeline.stream(GenerationRequest(preset=preset, **request)))[-1]


@pytest.fixture(scope="module")
def engine(module_server):
    """One engine for the module (a server start is ~15 s of CPU): one test asks it for replies, the other
    checks that it is sent nothing (its request count does not move)."""
    return module_server()


def test_constraints_reach_the_engine_and_the_reply_follows_them(engine, make_app):
    app = make_app()
    remote = app.models.load("remote:parlour-micro", options={"base_url": engine.url + "/v1"})
    sent: list[tuple[str, dict]] = []
    real = remote._stream

    def recording(path, body, cancel, text_of):
        sent.append((path, body))
        return real(path, body, cancel, text_of)

    remote._stream = recording
    local = make_app()
    local.models.load("parlour-micro")

    schema = Preset(json_schema=NESTED, seed=5, max_new_tokens=200)
    text = final(app, schema, prompt="card:").text
    jsonschema.validate(json.loads(text), NESTED)
    assert sent[-1][1]["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "reply", "schema": NESTED, "strict": True}}
    assert "json_schema" not in sent[-1][1]  # the Preset key itself is not sent as a sampler field
    assert text == final(local, schema, prompt="card:").text  # the engine followed the same schema, same seed

    chat = final(app, schema, messages=[{"role": "user", "content": "a card please"}])
    assert sent[-1][0] == "chat/completions" and jsonschema.validate(json.loads(chat.text), NESTED) is None

    anything = final(app, Preset(json_schema={"type": "object"}, seed=0, max_new_tokens=4), prompt="x")
    assert sent[-1][1]["response_format"] == {"type": "json_object"} and anything.text.startswith("{")

    for preset, valid, field in ((Preset(regex="[0-9]{3}-[a-z]{2}", seed=1), r"[0-9]{3}-[a-z]{2}", "regex"),
                                 (Preset(grammar_string='root ::= "yes" | "no"', seed=1), "yes|no", "grammar")):
        reply = final(app, preset, prompt="x")
        assert re.fullmatch(valid, reply.text) and reply.finish_reason == "stop"
        body = sent[-1][1]
        assert body[field] == body["structured_outputs"][field]  # llama.cpp server's / Parlour's and vLLM's names


def test_a_bad_constraint_is_refused_before_anything_is_sent(engine, make_app):
    app = make_app()
    remote = app.models.load("remote:parlour-micro", options={"base_url": engine.url + "/v1"})
    before = engine.health()["requests"]
    with pytest.raises(ConstraintError, match="invalid JSON schema at /properties/a/type"):
        check(remote, Preset(json_schema={"properties": {"a": {"type": "integr"}}}))
    with pytest.raises(ConstraintError, match="grammar_string: line 1, column"):
        check(remote, Preset(grammar_string='root ::= "a" ['))
    with pytest.raises(ConstraintError, match="matches nothing"):
        check(remote, Preset(grammar_string="start: a\na: b\nb: a"))
    assert engine.health()["requests"] == before
