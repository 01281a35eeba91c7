"""modules/constraints.py without a model: reading a constraint, every error it reports and where, the
compile budget, the stop-string rule, the sampler stage's mask, and the grammar files."""

from __future__ import annotations

import doctest
import json
import threading

import pytest
import torch
from pydantic import ValidationError

from modules import constraints
from modules.constraints import (Compiler, Constraint, ConstraintError, ConstraintViolation, UnsupportedConstraint,
                                 check, check_setting, constraint_of, stop_strings)
from modules.grammars import SHIPPED, GrammarError, GrammarLibrary
from modules.presets import MAX_CONSTRAINT_CHARS, Preset, PresetError, PresetStore
from tests.conftest import ROOT

FIXTURE_GRAMMARS = ROOT / "tests" / "fixtures" / "grammars"


def compile_error(**preset) -> str:
    with pytest.raises(ConstraintError) as caught:
        check(None, Preset(**preset))
    return str(caught.value)


def test_the_doctests_hold():
    assert doctest.testmod(constraints).failed == 0


def test_a_constraint_is_read_from_whichever_key_is_set():
    assert constraint_of(Preset()) is None
    assert constraint_of(Preset(grammar_string='root ::= "a"')).kind == "gbnf"
    assert constraint_of(Preset(grammar_string='start: "a"')).kind == "lark"
    assert constraint_of(Preset(regex="a+")).kind == "regex"
    schema = constraint_of(Preset(json_schema={"type": "object"}))
    assert schema.kind == "json_schema" and schema.schema == {"type": "object"}


def test_preset_holds_at_most_one_constraint_and_checks_json_and_size():
    with pytest.raises(ValidationError, match="grammar_string and regex are both set"):
        Preset(grammar_string='root ::= "a"', regex="a")
    with pytest.raises(ValidationError, match=r"not valid JSON \(line 1, column 2"):
        Preset(json_schema="{oops")
    with pytest.raises(ValidationError, match="a JSON schema is an object"):
        Preset(json_schema="[1, 2]")
    with pytest.raises(ValidationError, match=f"at most {MAX_CONSTRAINT_CHARS} characters"):
        Preset(regex="a" * (MAX_CONSTRAINT_CHARS + 1))
    assert Preset(json_schema='{"type": "string"}').json_schema == '{"type": "string"}'  # text kept as written


def test_a_grammar_is_saved_with_a_preset_and_text_generation_webui_presets_keep_theirs(tmp_path):
    store = PresetStore(tmp_path)
    store.save("json", Preset(temperature=0.7, json_schema={"type": "object"}))
    assert store.load("json").json_schema == '{"type": "object"}'
    # text-generation-webui writes grammar_string into its preset files: it loads, it is no longer dropped
    (tmp_path / "tgw.yaml").write_text('temperature: 0.7\ngrammar_string: |\n  root ::= "yes" | "no"\n')
    assert constraint_of(store.load("tgw")).text == 'root ::= "yes" | "no"\n'
    (tmp_path / "both.yaml").write_text('grammar_string: root ::= "a"\nregex: a\n')
    with pytest.raises(PresetError, match="both set"):
        store.load("both")


def test_invalid_json_schema_names_the_schema_path():
    message = compile_error(json_schema={"type": "object", "properties": {"age": {"type": "integr"}}})
    assert "invalid JSON schema at /properties/age/type" in message and "json_schema:" in message
    assert "/properties/n/minimum" in compile_error(json_schema={"properties": {"n": {"minimum": "5"}}})


def test_unsupported_schema_keyword_is_named_with_its_path():
    message = compile_error(json_schema={"type": "object", "properties": {
        "not": {"type": "string"}, "tags": {"type": "array", "uniqueItems": True}}})
    assert "unsupported JSON schema keyword 'uniqueItems' at /properties/tags" in message
    # a property *named* like a keyword is not mistaken for one
    assert "at /properties/x" in compile_error(json_schema={"properties": {"x": {"not": {"type": "null"}}}})


def test_unsatisfiable_schemas_and_grammars_fail_before_generation():
    assert "minimum (5) is greater than maximum (2)" in compile_error(json_schema={"type": "integer", "minimum": 5,
                                                                                    "maximum": 2})
    assert "matches nothing" in compile_error(grammar_string="start: a\na: b\nb: a")
    assert "matches only an empty reply" in compile_error(grammar_string='start: ""')
    assert "matches nothing" in compile_error(json_schema=False)
    assert "dangling" not in compile_error(json_schema={"$ref": "#/$defs/missing"})
    assert "/$defs/missing" in compile_error(json_schema={"$ref": "#/$defs/missing"})


def test_invalid_gbnf_names_line_and_column():
    message = compile_error(grammar_string='root ::= item+\nitem ::= "a" | [b-')
    assert message.startswith("grammar_string: line 2, column ") and "Unexpected end of input" in message
    message = compile_error(grammar_string='root ::= "a" thing\n')
    assert "line 1" in message and "Rule 'thing' not found" in message
    message = compile_error(grammar_string='# rules\nroot ::= "a" bad\nbad ::= [z-a]\n')
    assert "in rule bad (line 3): invalid regex" in message


def test_invalid_lark_and_regex_name_where():
    assert compile_error(grammar_string="start: foo\nfoo: /[/\n").startswith("grammar_string: line 2, column 6:")
    message = compile_error(regex="[0-9]{3}-(x")
    assert message == "regex: invalid regex at column 10: unclosed group"


def test_compile_budget_turns_a_slow_compile_into_an_error(monkeypatch):
    release = threading.Event()
    real = constraints.LLMatcher

    def slow(*args, **kwargs):  # a compile that cannot finish within the budget (released afterwards)
        release.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(constraints, "LLMatcher", type("Slow", (), {"__new__": lambda cls, *a, **k: slow(*a, **k),
                                                                     "grammar_from_regex": real.grammar_from_regex}))
    monkeypatch.setattr(constraints, "COMPILE_SECONDS", 0.01)
    try:
        with pytest.raises(ConstraintError, match="took longer than 0.01 s to compile"):
            Compiler.generic().matcher(Constraint("regex", "a+", "regex"))
    finally:
        release.set()


def test_unsupported_kind_is_a_clear_error_naming_the_loader():
    class LlamaCpp:  # what a loaded llama.cpp model can do is its loader's (the registry's capabilities)
        loader = "llama.cpp"

    with pytest.raises(UnsupportedConstraint, match="the llama.cpp loader does not support regex constraints "
                                                    r"\(it supports: JSON schema, GBNF grammar\)"):
        check(LlamaCpp(), Preset(regex="a"))


def test_stop_strings_under_a_constraint_are_only_the_users():
    derived = ("<|im_end|>", "\nYou:")
    free = Preset(custom_stopping_strings=["END"])
    assert stop_strings(free, derived) == ("END", "<|im_end|>", "\nYou:")
    constrained = free.model_copy(update={"json_schema": '{"type": "object"}'})
    assert stop_strings(constrained, derived) == ("END",)


def test_stage_allows_end_of_sequence_only_where_the_grammar_can_end():
    compiler = Compiler.generic()  # single bytes; 256 is the end token
    stage = compiler.stage(Constraint("regex", "ab?", "regex"), prompt_length=2)
    scores = torch.zeros(1, 300)  # wider than the vocabulary: the extra columns are never allowed
    prompt = [120, 121]

    def allowed(generated: list[int]) -> list[int]:
        out = stage(torch.tensor([prompt + generated]), scores)
        return out.isfinite().nonzero()[:, 1].tolist()

    assert allowed([]) == [ord("a")]
    assert allowed([ord("a")]) == [ord("b"), 256]  # "a" is complete, "ab" too: b or the end
    assert allowed([ord("a"), ord("b")]) == [256]  # nothing may follow "ab": only the end
    with pytest.raises(constraints.ConstraintViolation, match="a token outside the constraint"):
        compiler.stage(Constraint("regex", "ab", "regex"), 0)(torch.tensor([[ord("z")]]), scores)


def test_compiled_constraints_are_cached_and_each_request_gets_its_own_state():
    compiler = Compiler(Compiler.generic().tokenizer)
    constraint = Constraint("json_schema", json.dumps({"type": "boolean"}), "json_schema")
    first, second = compiler.matcher(constraint), compiler.matcher(constraint)
    assert len(compiler._cache) == 1
    assert first.consume_tokens(list(b"tr")) and not second.is_error()
    assert second.consume_tokens(list(b"false"))  # the first one's progress is not the second's


def test_the_parameters_tab_check_keeps_one_constraint_and_explains():
    assert check_setting(None, "regex", "  ", {}) is None  # an empty box clears it
    assert check_setting(None, "regex", "[0-9]+", {"regex": "a"}).kind == "regex"
    with pytest.raises(ConstraintError, match="the grammar is in use: clear it first"):
        check_setting(None, "json_schema", '{"type": "object"}', {"grammar_string": 'root ::= "a"'})
    with pytest.raises(ConstraintError, match="^json_schema: not valid JSON"):
        check_setting(None, "json_schema", "{", {})


def test_grammar_files_from_user_data_and_shipped(tmp_path):
    library = GrammarLibrary.for_user_data(tmp_path)
    shipped = {"json.gbnf", "list.gbnf", "yes_no.gbnf", "arithmetic.gbnf"}
    assert shipped <= set(library.names())
    (tmp_path / "grammars").mkdir()
    (tmp_path / "grammars" / "yes_no.gbnf").write_text('root ::= "oui" | "non"\n')
    (tmp_path / "grammars" / "mine.lark").write_text('start: "x"\n')
    (tmp_path / "grammars" / "notes.txt").write_text("not a grammar")
    assert {"mine.lark", "yes_no.gbnf"} <= set(library.names()) and "notes.txt" not in library.names()
    assert library.read("yes_no.gbnf") == 'root ::= "oui" | "non"\n'  # the user's file wins
    assert library.read("json.gbnf") == (SHIPPED / "json.gbnf").read_text()
    for bad in ("../secrets.gbnf", "/etc/passwd.gbnf", "notes.txt", "missing.gbnf"):
        with pytest.raises(GrammarError):
            library.read(bad)


@pytest.mark.parametrize("name", sorted(p.name for p in SHIPPED.glob("*.gbnf")))
def test_shipped_grammars_compile(name):
    check(None, Preset(grammar_string=(SHIPPED / name).read_text()))


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURE_GRAMMARS.glob("*.gbnf")))
def test_grammars_in_text_generation_webui_style_compile_as_they_are(name):
    """GBNF as text-generation-webui's user_data/grammars files write it: comments, multi-line rules, camelCase
    names, recursive whitespace rules, `{m,n}`, Unicode ranges in character classes."""
    check(None, Preset(grammar_string=(FIXTURE_GRAMMARS / name).read_text()))


def test_gbnf_unicode_escapes_work_as_llamacpp_reads_them():
    """`\\u0080-\\U0010FFFF` ranges (llama.cpp's own JSON grammars use them) mean those characters."""
    grammar = 'root ::= [\\u0041-\\u005A] [\\u00e0-\\u00ff]+ "\\U0001F600"'
    matcher = Compiler.generic().matcher(Constraint("gbnf", grammar, "grammar_string"))
    assert matcher.consume_tokens(list("Bàé😀".encode())) and matcher.is_accepting()
    json_grammar = Compiler.generic().matcher(Constraint("gbnf", (SHIPPED / "json.gbnf").read_text(), "g"))
    assert json_grammar.consume_tokens(list('{"a": "é€😀\\n"}'.encode())) and json_grammar.is_accepting()
    for bad in (b'{"a": "\n', b'{"a": "\xfb'):  # a raw control character, a byte that is not UTF-8
        assert not Compiler.generic().matcher(Constraint("gbnf", (SHIPPED / "json.gbnf").read_text(), "g")
                                              ).consume_tokens(list(bad))


def test_a_thinking_reply_is_free_until_its_answer_starts():
    """A prompt that opened a reasoning block: the thoughts are free, the answer after the marker follows the
    constraint (here byte tokens: the marker is '|')."""
    stage = Compiler.generic().stage(Constraint("regex", "ab", "regex"), prompt_length=2, wait_for=[ord("|")],
                                     ends=[256])
    scores = torch.zeros(1, 257)

    def allowed(generated: str) -> list[int]:
        ids = torch.tensor([[1, 2, *generated.encode()]], dtype=torch.long)
        return stage(ids, scores).isfinite().nonzero()[:, 1].tolist()

    # thinking: nothing masked but the end (a constrained reply has an answer)
    assert allowed("") == allowed("I think") == list(range(256))
    assert allowed("I think|") == [ord("a")]  # the answer begins: only the regex's first character
    assert allowed("I think|a") == [ord("b")]
    with pytest.raises(ConstraintViolation):
        allowed("I think|ax")  # a token outside the constraint after the marker is caught as before
