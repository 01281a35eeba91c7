"""Constrained output on the llama.cpp loader (llama.cpp's own grammar sampler) with the tiny GGUF the tests write."""

from __future__ import annotations

import json
import re
import threading

import httpx
import jsonschema
import pytest

from modules.constraints import ConstraintError, UnsupportedConstraint, check
from modules.grammars import SHIPPED
from modules.loaders.llamacpp import LlamaCppBackend
from modules.loaders.options import LlamaCppOptions
from modules.presets import Preset
from tests.constraint_cases import LLAMACPP_SCHEMAS, SCHEMAS
from tests.gguf_writer import write_gguf


@pytest.fixture(scope="module")
def gguf_dir(models_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf-constrained")
    write_gguf(models_dir / "parlour-micro", folder / "micro.f32.gguf")
    return folder


@pytest.fixture(scope="module")
def gguf(gguf_dir):
    return LlamaCppBackend(gguf_dir / "micro.f32.gguf", LlamaCppOptions(n_ctx=1024))


def reply(backend, preset: Preset) -> tuple[str, str]:
    deltas = list(backend.stream("Answer:", preset, threading.Event()))
    return "".join(d.text for d in deltas), deltas[-1].finish_reason


@pytest.mark.parametrize("name", LLAMACPP_SCHEMAS)
def test_json_schemas_through_llamacpp_grammar(gguf, name):
    for seed in range(3):
        text, finish = reply(gguf, Preset(json_schema=SCHEMAS[name], seed=seed, max_new_tokens=300))
        assert finish == "stop", text
        jsonschema.validate(json.loads(text), SCHEMAS[name])


def test_gbnf_grammar_files_through_llamacpp(gguf):
    for seed in range(3):
        text, finish = reply(gguf, Preset(grammar_string=(SHIPPED / "yes_no.gbnf").read_text(), seed=seed))
        assert text in ("yes", "no") and finish == "stop"
        pattern = r"(- [^\n]{1,200}\n){1,10}"
        text, finish = reply(gguf, Preset(grammar_string=(SHIPPED / "list.gbnf").read_text(), seed=seed,
                                          max_new_tokens=600))
        assert finish == "stop" and re.fullmatch(pattern, text), text
        # ban_eos_token does not keep a finished grammar going: the grammar says where the reply ends
        text, finish = reply(gguf, Preset(grammar_string='root ::= [a-z]{2,4}', seed=seed, ban_eos_token=True))
        assert finish == "stop" and re.fullmatch("[a-z]{2,4}", text)


def test_what_llamacpp_cannot_enforce_is_refused_by_name(gguf):
    with pytest.raises(UnsupportedConstraint, match="the llama.cpp loader does not support regex constraints"):
        check(gguf, Preset(regex="[0-9]+"))
    with pytest.raises(UnsupportedConstraint, match="does not support Lark grammar constraints"):
        check(gguf, Preset(grammar_string='start: "a"'))
    with pytest.raises(UnsupportedConstraint):  # generating checks too (a preset file may hold one)
        list(gguf.stream("x", Preset(regex="a"), threading.Event()))
    with pytest.raises(ConstraintError, match="unsupported JSON schema keyword 'maximum' at /properties/age "
                                              r"\(the llama.cpp loader's schema converter does not enforce it\)"):
        check(gguf, Preset(json_schema=SCHEMAS["flat_object"]))
    with pytest.raises(ConstraintError, match="unsupported string format 'ipv4' at /properties/host"):
        check(gguf, Preset(json_schema=SCHEMAS["string_formats"]))
    with pytest.raises(ConstraintError, match="invalid JSON schema at /properties/n/type"):
        check(gguf, Preset(json_schema={"properties": {"n": {"type": "integr"}}}))
    with pytest.raises(ConstraintError, match=r"^grammar_string: line 2, column \d+: Unexpected end of input"):
        check(gguf, Preset(grammar_string='root ::= item\nitem ::= [a-'))
    with pytest.raises(ConstraintError, match="grammar_string: llama.cpp could not parse the grammar"):
        check(gguf, Preset(grammar_string="root ::= a\na ::= a \"x\""))  # left recursion: llama.cpp's own check


def test_llamacpp_server_answers_constraints_and_refuses_a_regex(start_server, gguf_dir):
    server = start_server("--models-dir", str(gguf_dir), "--model", "micro.f32.gguf")
    body = {"model": "micro.f32.gguf", "prompt": "card:", "max_tokens": 300, "seed": 1,
            "response_format": {"type": "json_schema", "json_schema": {"name": "e", "schema": SCHEMAS["enums"]}}}
    out = httpx.post(server.url + "/v1/completions", json=body, timeout=120).json()
    assert out["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(out["choices"][0]["text"]), SCHEMAS["enums"])
    refused = httpx.post(server.url + "/v1/completions", json={**body, "response_format": None, "regex": "[0-9]+"},
                         timeout=120)
    assert refused.status_code == 400
    assert refused.json()["error"] == {"message": "regex: the llama.cpp loader does not support regex constraints "
                                                  "(it supports: JSON schema, GBNF grammar)",
                                       "type": "invalid_request_error", "param": "regex", "code": "unsupported"}
