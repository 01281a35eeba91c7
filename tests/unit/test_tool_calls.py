"""Tool-call formats on real template output: each family's template (tests/fixtures/tool-templates, shaped like
the real ones) renders a reply with calls from its history; that text, as the model would write it, is read
back by the parser `detect` picks for the template, at once and streamed in pieces of every size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modules.templates import ChatTemplate
from modules.tools import formats
from modules.tools.prompt import plain_messages, tool_aware
from modules.tools.spec import read_tools
from modules.tools.stream import CallStream, deltas
from modules.turns import TextPart, ToolCallPart, ToolResultPart, Turn

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tool-templates"
TOOLS = read_tools([
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}}])
CALLS = (ToolCallPart("call_1", "get_weather", '{"city": "Paris \\"Ville\\" </tool_call>", "days": 3}'),
         ToolCallPart("call_2", "add", '{"a": 1.5, "b": -2}'))
VARS = {"bos_token": "<s>", "eos_token": "</s>"}
ENDS = {"hermes": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>", "mistral-args": "</s>"}


def reply_text(name: str, calls: tuple[ToolCallPart, ...], words: str = "") -> tuple[formats.CallFormat, str]:
    """What the model writes for `calls`, as its own template renders that reply in the history."""
    template = ChatTemplate((FIXTURES / f"{name}.jinja").read_text())
    assert tool_aware(template)
    ask = [{"role": "user", "content": "Weather in Paris, and 1.5 + -2?"}]
    offered = [t.openai() for t in TOOLS]
    turn = Turn("assistant", ((TextPart(words),) if words else ()) + calls)
    prompt = template.render(ask, add_generation_prompt=True, tools=offered, **VARS)
    full = template.render(ask + turn.template_messages(), add_generation_prompt=False, tools=offered, **VARS)
    assert full.startswith(prompt.rstrip("\n")), "the history renders the prompt's turns the same way"
    reply = full[len(prompt):] if full.startswith(prompt) else full[len(prompt.rstrip("\n")):].lstrip("\n")
    reply = reply.rstrip("\n")
    assert reply.endswith(ENDS[name])
    return formats.detect(template.source), reply[: -len(ENDS[name])]


@pytest.mark.parametrize("name, count", [("hermes", 2), ("llama3", 1), ("mistral", 2), ("mistral-args", 2)])
def test_each_family_reads_back_the_calls_its_template_writes(name, count):
    fmt, text = reply_text(name, CALLS[:count])
    assert fmt.name == name
    parsed = formats.parse(fmt, text, TOOLS)
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == \
        [(c.name, json.loads(c.arguments)) for c in CALLS[:count]]
    assert parsed.content == ""


@pytest.mark.parametrize("name", ["hermes", "mistral-args"])
def test_words_before_the_calls_are_the_content(name):
    fmt, text = reply_text(name, CALLS, words="Let me look that up.")
    parsed = formats.parse(fmt, text, TOOLS)
    assert parsed.content == "Let me look that up." and len(parsed.calls) == 2


@pytest.mark.parametrize("name, count", [("hermes", 2), ("llama3", 1), ("mistral", 2), ("mistral-args", 2)])
def test_streamed_in_any_pieces_gives_what_the_whole_text_gives(name, count):
    fmt, text = reply_text(name, CALLS[:count], words="" if name in ("llama3", "mistral") else "Checking.")
    whole = formats.parse(fmt, text, TOOLS)
    for size in (1, 2, 3, 5, 8, 13, len(text)):
        stream = CallStream(fmt, TOOLS, new_id=iter(f"id{i}" for i in range(9)).__next__)
        shown, sent, entries = "", [], []
        for i in range(0, len(text), size):
            shown += stream.feed(text[i:i + size])
            assert not any(m in shown for m in ("<tool", "[TOOL", "{")), "a call's text never shows as content"
            entries += deltas(sent, stream.calls)
            sent = list(stream.calls)
        rest, parsed = stream.finish()
        shown += rest
        entries += deltas(sent, stream.calls)
        assert parsed == whole and shown == whole.content
        # the deltas, accumulated by index as OpenAI clients do, are the final calls
        built: dict[int, dict] = {}
        for entry in entries:
            call = built.setdefault(entry["index"], {"name": "", "arguments": ""})
            if "id" in entry:
                assert entry["type"] == "function" and entry["function"]["arguments"] == ""
                call["name"], call["id"] = entry["function"]["name"], entry["id"]
            call["arguments"] += entry["function"]["arguments"]
        assert [(c["id"], c["name"], c["arguments"]) for c in built.values()] == \
            [(c.id, c.name, c.arguments) for c in stream.calls]


def test_plain_text_is_streamed_as_it_comes_and_held_only_where_a_marker_may_start():
    stream = CallStream(formats.HERMES, TOOLS)
    assert stream.feed("Hello there") == "Hello there"
    assert stream.feed(", friend. <tool") == ", friend."
    assert stream.feed("box> is a tag") == " <toolbox> is a tag"
    assert stream.finish() == ("", formats.Parsed("Hello there, friend. <toolbox> is a tag"))


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',  # cut short
    '<tool_call>\n{"name": "launch_rockets", "arguments": {}}\n</tool_call>',  # not one of the tools
    '<tool_call>\nget_weather(city="Paris")\n</tool_call>',  # not JSON
    '<tool_call>\n{"name": "add", "arguments": [1, 2]}\n</tool_call>',  # arguments not an object
    '{"name": "add", "arguments": {"a": 1}} is how you would call it',  # JSON followed by words
])
def test_what_is_not_a_valid_call_stays_content(text):
    assert formats.parse(formats.HERMES, text, TOOLS) == formats.Parsed(text)
    stream = CallStream(formats.HERMES, TOOLS)
    shown = stream.feed(text)
    rest, _ = stream.finish()
    assert shown + rest == text and not stream.calls


def test_a_bare_json_call_is_read_by_every_format():
    text = '  {"name": "add", "arguments": "{\\"a\\": 2, \\"b\\": 3}"}\n'  # arguments as JSON text, as some send
    for fmt in formats.FORMATS.values():
        parsed = formats.parse(fmt, text, TOOLS)
        assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [("add", {"a": 2, "b": 3})], fmt.name


def test_templates_without_tools_get_calls_and_results_as_text():
    turn = Turn("assistant", (TextPart("Checking."), CALLS[1], ToolResultPart("call_2", "add", "-0.5"),
                              TextPart("It is -0.5.")))
    messages = plain_messages(turn.template_messages())
    assert [m["role"] for m in messages] == ["assistant", "user", "assistant"]
    assert formats.parse(formats.GENERIC, messages[0]["content"], TOOLS).calls == (
        formats.ParsedCall("add", '{"a": 1.5, "b": -2}'),)
    assert messages[1]["content"] == "<tool_response>\n-0.5\n</tool_response>"


@pytest.mark.parametrize("name", ["hermes", "llama3", "mistral", "mistral-args"])
def test_the_forced_call_grammar_accepts_the_family_s_own_call_and_nothing_else(name):
    from modules.constraints import Compiler, Constraint
    from modules.tools.spec import ToolChoice

    fmt, text = reply_text(name, CALLS[1:])  # add(a=1.5, b=-2), as the template writes it
    grammar = formats.call_grammar(fmt, TOOLS, ToolChoice("function", "add"), json.dumps)
    compiler = Compiler.generic()  # single bytes: any text the grammar allows, with no model

    def accepts(reply: str) -> bool:
        matcher = compiler.matcher(Constraint("lark", grammar, "grammar_string"))
        return matcher.consume_tokens(list(reply.encode())) and matcher.is_accepting()

    assert accepts(text)
    assert not accepts(text.replace('"b": -2', '"b": "two"'))  # arguments follow the tool's schema
    other = text.replace('"add"', '"get_weather"') if name != "mistral-args" else text.replace("add", "get_weather")
    assert other != text and not accepts(other)  # the named function only
    assert not accepts(text.replace("}", ', "c": 1}', 1))  # no keys the tool does not name


@pytest.mark.parametrize("name", ["hermes", "mistral", "mistral-args"])
def test_in_auto_mode_the_grammar_lets_text_be_and_constrains_a_call_once_it_starts(name):
    from modules.constraints import Compiler, Constraint
    from modules.tools.spec import AUTO

    fmt, text = reply_text(name, CALLS[1:], words="Sure.")
    grammar = formats.call_grammar(fmt, TOOLS, AUTO, json.dumps, lazy=True)
    compiler = Compiler.generic()

    def accepts(reply: str) -> bool:
        matcher = compiler.matcher(Constraint("lark", grammar, "grammar_string"))
        return matcher.consume_tokens(list(reply.encode())) and matcher.is_accepting()

    assert accepts(text) and accepts("Just words, <tool> and [brackets] and {braces}.") and accepts("")
    assert not accepts(text.replace('"b": -2', '"b": "two"'))  # once started, the call follows the schema
    assert not accepts(text + " And more words.")  # nothing after the calls
    assert accepts(reply_text(name, CALLS, words="Sure.")[1])  # parallel calls


def test_mistral_templates_get_the_nine_character_call_ids_they_require():
    from modules.tools.prompt import for_template

    turn = Turn("assistant", (CALLS[1],))
    result = Turn("tool", (ToolResultPart("call_2", "add", "-0.5"),))
    messages = turn.template_messages() + result.template_messages()
    mistral = for_template(messages, ChatTemplate((FIXTURES / "mistral.jinja").read_text()))
    assert mistral[0]["tool_calls"][0]["id"] == mistral[1]["tool_call_id"] == "0000call2"
    assert for_template(messages, ChatTemplate((FIXTURES / "hermes.jinja").read_text())) == messages
