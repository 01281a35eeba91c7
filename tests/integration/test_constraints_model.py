"""Constrained output on real micro models: the batch engine (the default path) and generate(), a byte-level
BPE and a sentencepiece tokenizer. The models are barely trained, so their replies are nonsense: whatever is
valid about them comes from the constraint alone, checked by independent validators (jsonschema, re, ast)."""

from __future__ import annotations

import ast
import concurrent.futures
import json
import re
import threading

import jsonschema
import pytest

from modules.constraints import ConstraintError, check
from modules.generation import GenerationRequest
from modules.grammars import SHIPPED
from modules.loaders.transformers import TransformersBackend
from modules.presets import Preset
from tests.constraint_cases import SCHEMAS
from tests.model_cache import cached_model

FORMATS = jsonschema.FormatChecker()
ASK = [{"role": "user", "content": "Answer in the requested format."}]


@pytest.fixture(scope="module")
def batched(micro_path):
    """The micro Llama behind the batch engine, four rows at a time (Parlour's default --batch-size)."""
    backend = TransformersBackend(micro_path, batch_size=4)
    yield backend
    backend.unload()


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory):
    """A micro Llama whose tokenizer is a sentencepiece `tokenizer.model` (as Llama 2 and Mistral ship), on the
    generate() path."""
    folder = cached_model(tmp_path_factory.mktemp("sp") / "parlour-micro-sp", tokenizer="sentencepiece")
    assert (folder / "tokenizer.model").exists() and not (folder / "tokenizer.json").exists()
    return TransformersBackend(folder)


def reply(backend, preset: Preset, prompt: str | None = None) -> tuple[str, int, str]:
    prompt = prompt if prompt is not None else backend.chat_template.render(ASK)
    deltas = list(backend.stream(prompt, preset, threading.Event()))
    return "".join(d.text for d in deltas), sum(d.tokens for d in deltas), deltas[-1].finish_reason


def together(backend, presets: list[Preset]) -> list[tuple[str, int, str]]:
    with concurrent.futures.ThreadPoolExecutor(len(presets)) as pool:
        return list(pool.map(lambda p: reply(backend, p), presets))


def assert_valid(text: str, schema: dict) -> None:
    jsonschema.validate(json.loads(text), schema, format_checker=FORMATS)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_schema_with_three_seeds_in_one_batch(batched, name):
    schema = SCHEMAS[name]
    for text, _, finish in together(batched, [Preset(json_schema=schema, seed=s, max_new_tokens=200) for s in range(3)]):
        assert finish == "stop", text  # it ended where the schema let it, by itself
        assert_valid(text, schema)
    assert batched.engine.largest_batch >= 2


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_schema_with_a_sentencepiece_tokenizer(sentencepiece, name):
    text, _, finish = reply(sentencepiece, Preset(json_schema=SCHEMAS[name], seed=7, max_new_tokens=200))
    assert finish == "stop", text
    assert_valid(text, SCHEMAS[name])


def test_rows_with_and_without_constraints_share_a_batch(batched, micro_path):
    free = Preset(temperature=0.0, max_new_tokens=30, ban_eos_token=True)
    alone = reply(batched, free)[0]
    schema = SCHEMAS["flat_object"]
    rows = together(batched, [Preset(json_schema=schema, seed=1, max_new_tokens=120), free,
                              Preset(regex="[a-z]{4}-[0-9]{2}", seed=2), free])
    assert_valid(rows[0][0], schema)
    assert re.fullmatch("[a-z]{4}-[0-9]{2}", rows[2][0]) and rows[2][2] == "stop"
    assert rows[1][0] == rows[3][0] == alone  # the unconstrained rows are untouched by their neighbours' masks
    generate_path = TransformersBackend(micro_path)  # and generate() gives a constrained row the same text
    assert reply(generate_path, Preset(json_schema=schema, seed=1, max_new_tokens=120))[0] == rows[0][0]


def test_max_tokens_mid_object_ends_with_length(batched):
    text, tokens, finish = reply(batched, Preset(json_schema=SCHEMAS["nested_objects"], seed=0, max_new_tokens=6))
    assert (tokens, finish) == (6, "length")
    assert text.startswith('{"person"')
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_end_of_sequence_only_where_the_grammar_can_end(batched):
    for seed in range(3):
        text, _, finish = reply(batched, Preset(regex="[a-z]{3,5}", seed=seed, ban_eos_token=True))
        assert finish == "stop" and re.fullmatch("[a-z]{3,5}", text)  # ban_eos_token cannot keep it going
        text, tokens, finish = reply(batched, Preset(grammar_string='root ::= "yes" | "no"', seed=seed))
        assert text in ("yes", "no") and finish == "stop"


@pytest.mark.parametrize("pattern", [r"[0-9]{3}-[0-9]{4}", r"(red|green|blue) (cat|dog)s?", r"[A-Z][a-z]{2,8}!"])
def test_regex(batched, pattern):
    for text, _, finish in together(batched, [Preset(regex=pattern, seed=s) for s in range(3)]):
        assert finish == "stop" and re.fullmatch(pattern, text), text


def _arithmetic(text: str) -> bool:
    tree = ast.parse(text, mode="eval")
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.USub)
    return all(isinstance(node, allowed) for node in ast.walk(tree))


@pytest.mark.parametrize("name,valid", [
    ("yes_no.gbnf", lambda t: t in ("yes", "no")),
    ("arithmetic.gbnf", _arithmetic),
    ("list.gbnf", lambda t: re.fullmatch(r"(- [^\n]{1,200}\n){1,10}", t) is not None),
])
def test_shipped_grammar_files(batched, name, valid):
    grammar = (SHIPPED / name).read_text()
    for text, _, finish in together(batched, [Preset(grammar_string=grammar, seed=s, max_new_tokens=400)
                                              for s in range(3)]):
        assert finish == "stop" and valid(text), text


def test_a_constrained_reply_is_cut_only_at_the_users_stop_strings(make_app):
    from modules import chat

    app = make_app()
    app.models.load("parlour-micro")
    options = chat.resolve_options(app, "local", character="Example", mode="chat")
    turn = f"\n{options.name1}:"  # chat mode stops a reply where the user's next line would start
    text = f"hi{turn} there{turn} again"
    hi = [{"role": "user", "content": "hi"}]

    def answer(preset: Preset) -> str:
        return list(app.pipeline.stream(chat.request_for(hi, options, preset)))[-1].text

    assert answer(Preset(regex=re.escape(text), seed=0)) == text  # the template's stop string does not cut it
    user_stop = Preset(regex=re.escape(text), seed=0, custom_stopping_strings=[" again"])
    assert answer(user_stop) == f"hi{turn} there{turn}"  # the user's own stop string still does


def test_the_backend_compiles_once_and_reports_errors_before_generating(batched):
    preset = Preset(json_schema=SCHEMAS["enums"])
    assert check(batched, preset).kind == "json_schema"
    cached = len(batched.constraint_compiler()._cache)
    reply(batched, preset.model_copy(update={"seed": 3}))
    assert len(batched.constraint_compiler()._cache) == cached  # the request reused the checked compile
    with pytest.raises(ConstraintError, match="matches nothing"):
        check(batched, Preset(grammar_string="start: a\na: b\nb: a"))
    with pytest.raises(ConstraintError, match="json_schema: unsupported JSON schema keyword 'not' at /"):
        reply(batched, Preset(json_schema={"not": {"type": "string"}}))  # a request that skipped the check


@pytest.mark.demo
def test_json_mode_and_the_json_grammar_on_the_demo_model():
    """Any JSON object (response_format json_object) and the shipped json.gbnf, on the trained demo model: its
    strings are short enough to close by themselves, which a schema without maxLength needs (at temperature
    0.7: at 1.0 the thinking demo wanders on inside a string past 400 tokens)."""
    from tests.conftest import DEMO_DIR

    demo = TransformersBackend(DEMO_DIR, batch_size=4)
    try:
        grammar = (SHIPPED / "json.gbnf").read_text()
        presets = [Preset(json_schema={"type": "object"}, seed=s, max_new_tokens=400, temperature=0.7) for s in range(3)]
        presets += [Preset(grammar_string=grammar, seed=s, max_new_tokens=400, temperature=0.7) for s in range(3)]
        for text, _, finish in together(demo, presets):
            assert finish == "stop" and isinstance(json.loads(text), dict), text
    finally:
        demo.unload()
