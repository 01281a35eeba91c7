"""Constrained output over the API, black-box: the official `openai` client (its `parse()` with a pydantic
model) and raw HTTP against a real server process serving the micro model through the batch engine."""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from modules.presets import MAX_CONSTRAINT_CHARS
from tests.conftest import ROOT, ServerProcess
from tests.constraint_cases import SCHEMAS

MODEL = "parlour-micro"
ASK = [{"role": "user", "content": "Describe a card as JSON."}]
FLAT = SCHEMAS["flat_object"]


class Card(BaseModel):
    name: Annotated[str, Field(max_length=12)]
    age: int = Field(ge=0, le=120)
    color: Literal["red", "green", "blue"]
    tags: list[Annotated[str, Field(max_length=6)]] = Field(max_length=3)


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    tmp = tmp_path_factory.mktemp("constrained-api")
    presets = tmp / "presets"
    presets.mkdir()
    (presets / "YesNo.yaml").write_text('temperature: 0.8\ngrammar_string: root ::= "yes" | "no"\n')
    srv = ServerProcess(["--user-data", str(tmp / "user_data"), "--settings", str(tmp / "s.yaml"),
                         "--models-dir", str(models_dir), "--model", MODEL, "--presets-dir", str(presets)],
                        cwd=ROOT, log=tmp / "server.log")
    try:
        srv.wait_until(lambda h: h["model"] is not None)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def post(server, path: str, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{path}", json={"model": MODEL, "max_tokens": 200, **body}, timeout=120)


def reply_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    return choice["message"]["content"] if "message" in choice else choice["text"]


def test_openai_parse_round_trips_a_pydantic_model(client):
    for seed in range(3):
        completion = client.chat.completions.parse(model=MODEL, messages=ASK, response_format=Card, seed=seed,
                                                   max_tokens=300)
        choice = completion.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Card)  # the client validated the reply against its own model
        assert Card.model_validate_json(choice.message.content) == choice.message.parsed


def test_json_schema_streamed_chunks_concatenate_to_the_same_valid_text(client):
    response_format = {"type": "json_schema", "json_schema": {"name": "nested", "strict": True,
                                                              "schema": SCHEMAS["nested_objects"]}}
    kwargs = dict(model=MODEL, messages=ASK, max_tokens=200, seed=11, response_format=response_format)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    assert len(chunks) > 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    jsonschema.validate(json.loads(whole), SCHEMAS["nested_objects"])


def test_completions_take_response_format_too_streamed_or_not(client):
    body = {"response_format": {"type": "json_schema", "json_schema": {"name": "flat", "schema": FLAT}}}
    kwargs = dict(model=MODEL, prompt="card:", max_tokens=120, seed=4, extra_body=body)
    whole = client.completions.create(**kwargs).choices[0]
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs))
    assert whole.finish_reason == "stop" and streamed == whole.text
    jsonschema.validate(json.loads(whole.text), FLAT)


def test_n_choices_each_follow_the_schema(client):
    out = client.chat.completions.create(model=MODEL, messages=ASK, n=3, seed=2, max_tokens=120,
                                         response_format={"type": "json_schema",
                                                          "json_schema": {"name": "flat", "schema": FLAT}})
    assert len(out.choices) == 3
    for choice in out.choices:
        jsonschema.validate(json.loads(choice.message.content), FLAT)


def test_json_object_mode(client):
    out = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, seed=0,
                                         response_format={"type": "json_object"})
    text = out.choices[0].message.content
    assert text.startswith("{")  # only an object may start (the demo-model test shows it finishing)
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert out.choices[0].finish_reason == "length"


@pytest.mark.parametrize("body,valid", [
    ({"grammar": 'root ::= "yes" | "no"'}, lambda t: t in ("yes", "no")),  # llama.cpp server
    ({"json_schema": SCHEMAS["enums"]}, lambda t: jsonschema.validate(json.loads(t), SCHEMAS["enums"]) is None),
    ({"grammar_string": "root ::= [0-9]{4}"}, lambda t: re.fullmatch("[0-9]{4}", t)),  # text-generation-webui
    ({"regex": "[a-c]{2}-[0-9]"}, lambda t: re.fullmatch("[a-c]{2}-[0-9]", t)),
    ({"guided_regex": "(cat|dog)s"}, lambda t: t in ("cats", "dogs")),  # vLLM's older names
    ({"guided_choice": ["left", "right"]}, lambda t: t in ("left", "right")),
    ({"guided_json": SCHEMAS["const"]}, lambda t: jsonschema.validate(json.loads(t), SCHEMAS["const"]) is None),
    ({"structured_outputs": {"regex": "x{3}"}}, lambda t: t == "xxx"),  # vLLM's structured outputs
    ({"structured_outputs": {"choice": ["up", "down"]}}, lambda t: t in ("up", "down")),
    ({"response_format": {"type": "json_object", "schema": SCHEMAS["booleans_and_null"]}},  # llama.cpp's form
     lambda t: jsonschema.validate(json.loads(t), SCHEMAS["booleans_and_null"]) is None),
])
def test_other_engines_field_names(server, body, valid):
    for path, extra in (("chat/completions", {"messages": ASK}), ("completions", {"prompt": "answer:"})):
        response = post(server, path, seed=3, **extra, **body)
        assert valid(reply_of(response)), response.text
        assert "X-Parlour-Ignored-Fields" not in response.headers  # every constraint field was applied


def test_the_same_constraint_under_two_names_is_fine_two_different_ones_are_not(server):
    assert reply_of(post(server, "completions", prompt="a", regex="[0-9]{2}",
                         structured_outputs={"regex": "[0-9]{2}"}))
    response = post(server, "completions", prompt="a", regex="[0-9]{2}", grammar='root ::= "x"')
    assert response.status_code == 400 and response.json()["error"]["param"] == "regex"
    assert response.json()["error"]["message"] == "grammar and regex ask for different constraints; a reply follows one"


def test_a_grammar_saved_with_a_preset_applies_and_a_request_can_replace_it(server):
    assert reply_of(post(server, "completions", prompt="ok?", preset="YesNo", seed=1)) in ("yes", "no")
    text = reply_of(post(server, "completions", prompt="ok?", preset="YesNo", regex="[0-9]{3}", seed=1))
    assert re.fullmatch("[0-9]{3}", text)
    free = post(server, "completions", prompt="ok?", preset="YesNo", response_format={"type": "text"}, max_tokens=5,
                seed=1, ban_eos_token=True).json()["choices"][0]
    assert free["finish_reason"] == "length"  # unconstrained: it ran to max_tokens


def test_max_tokens_mid_object_is_length(client):
    out = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, seed=0, response_format={
        "type": "json_schema", "json_schema": {"name": "flat", "schema": FLAT}})
    assert out.choices[0].finish_reason == "length" and out.choices[0].message.content.startswith("{")
    with pytest.raises(openai.LengthFinishReasonError):  # what the client's parse() makes of it
        client.chat.completions.parse(model=MODEL, messages=ASK, response_format=Card, max_tokens=5, seed=0)


def _error(response: httpx.Response) -> dict:
    assert response.status_code == 400, response.text
    return response.json()["error"]


def _schema(schema) -> dict:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


@pytest.mark.parametrize("body,param,message", [
    (_schema({"type": "object", "properties": {"n": {"type": "integr"}}}), "response_format.json_schema.schema",
     "invalid JSON schema at /properties/n/type"),
    (_schema({"type": "array", "uniqueItems": True}), "response_format.json_schema.schema",
     "unsupported JSON schema keyword 'uniqueItems' at /"),
    (_schema({"type": "integer", "minimum": 3, "maximum": 1}), "response_format.json_schema.schema",
     "minimum (3) is greater than maximum (1)"),
    ({"grammar": 'root ::= "a" |\n  item\nitem ::= [b-'}, "grammar", "grammar: line 3, column "),
    ({"grammar_string": "start: a\na: b\nb: a"}, "grammar_string", "matches nothing"),
    ({"regex": "(ab"}, "regex", "regex: invalid regex at column 1: unclosed group"),
    ({"json_schema": "{not json"}, "json_schema", "not valid JSON (line 1, column 2"),
    ({"response_format": {"type": "xml"}}, "response_format.type", "must be text, json_object or json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema",
     "schema is required"),
    ({"structured_outputs": {"structural_tag": "x"}}, "structured_outputs.structural_tag", "not a structured output"),
    ({"regex": "a" * (MAX_CONSTRAINT_CHARS + 1)}, "regex", f"at most {MAX_CONSTRAINT_CHARS} characters"),
    ({"guided_choice": []}, "guided_choice", "a list of non-empty strings"),
])
def test_every_bad_constraint_is_a_400_naming_the_field_and_where(server, body, param, message):
    before = server.health()["requests"]
    for path, extra in (("chat/completions", {"messages": ASK}), ("completions", {"prompt": "x"})):
        error = _error(post(server, path, **extra, **body))
        assert error["param"] == param and message in error["message"], error
        assert param.split(".")[0] in error["message"]  # the message names the field too
    assert server.health()["requests"] == before  # refused before generating anything


def test_a_huge_schema_is_refused_by_size(server):
    huge = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 5} for i in range(4000)}}
    error = _error(post(server, "completions", prompt="x", **_schema(huge)))
    assert error["param"] == "response_format.json_schema.schema" and "the limit is 100,000" in error["message"]
