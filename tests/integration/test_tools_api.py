"""Function calling over the API, black-box: the official `openai` client and LangChain against a real server
on the demo model (whose template is not tool-aware: the generic tool prompt and parser). Forced calls are
generated under the tools' schemas, so even this tiny model's calls validate; the API never runs a tool."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import DEMO_DIR

pytestmark = pytest.mark.demo
MODEL = "parlour-demo"
ADD = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}
ROLL = {"type": "object", "properties": {"sides": {"enum": [4, 6, 8, 20]}}, "required": ["sides"]}
TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD}},
         {"type": "function", "function": {"name": "roll_dice", "description": "Roll a die", "parameters": ROLL}}]
SCHEMAS = {"add": ADD, "roll_dice": ROLL}
ASK = [{"role": "user", "content": "What is 2 plus 3?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.conftest import ROOT, ServerProcess

    assert (DEMO_DIR / "config.json").exists(), "the demo model is missing: ./test.sh builds it"
    tmp = tmp_path_factory.mktemp("tools-api")
    srv = ServerProcess(["--user-data", str(tmp / "user_data"), "--settings", str(tmp / "s.yaml"),
                         "--models-dir", str(DEMO_DIR.parent), "--model", MODEL], cwd=ROOT, log=tmp / "server.log")
    try:
        srv.wait_until(lambda h: h["model"] is not None)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def valid_calls(message) -> list:
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return message.tool_calls


@pytest.mark.parametrize("thinking", [True, False])
def test_required_returns_a_call_whose_arguments_validate(client, thinking):
    completion = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                                temperature=0, max_tokens=160,
                                                extra_body={"enable_thinking": thinking})
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(valid_calls(choice.message)) == 1
    assert choice.message.content is None  # only a call: OpenAI's null content
    assert bool(getattr(choice.message, "reasoning_content", None)) == thinking  # it thought first


def test_a_named_function_is_the_one_called(client):
    for name in ("add", "roll_dice"):
        choice = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, temperature=0,
                                                tool_choice={"type": "function", "function": {"name": name}},
                                                max_tokens=160).choices[0]
        assert [c.function.name for c in valid_calls(choice.message)] == [name]


def test_streamed_calls_accumulate_to_the_non_streamed_reply(client):
    kwargs = {"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "required", "seed": 7, "max_tokens": 160}
    whole = client.chat.completions.create(**kwargs).choices[0]
    with client.chat.completions.stream(**kwargs) as stream:
        chunks = [event.chunk for event in stream if event.type == "chunk"]
        streamed = stream.get_final_completion().choices[0]
    starts = [d for c in chunks for ch in c.choices for d in (ch.delta.tool_calls or []) if d.id]
    fragments = [d for c in chunks for ch in c.choices for d in (ch.delta.tool_calls or []) if not d.id]
    assert len(starts) == 1 and starts[0].function.name and starts[0].type == "function"
    assert len(fragments) > 1  # the arguments arrive in pieces, by index
    assert streamed.finish_reason == whole.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]


def test_the_tool_result_continues_the_turn(client):
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=160, temperature=0,
                                           tool_choice={"type": "function", "function": {"name": "add"}})
    call = first.choices[0].message.tool_calls[0]
    history = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "5"}]
    second = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=40,
                                            temperature=0, extra_body={"enable_thinking": False})
    choice = second.choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.message.content
    assert not choice.message.tool_calls


def test_auto_lets_the_model_answer_in_words(client):
    choice = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}],
                                            tools=TOOLS, max_tokens=60, temperature=0,
                                            extra_body={"enable_thinking": False}).choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.message.content and not choice.message.tool_calls


def test_langchain_bind_tools_round_trip(server):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    llm = ChatOpenAI(model=MODEL, base_url=server.url + "/v1", api_key="unused", temperature=0, max_tokens=160,
                     max_retries=0)
    bound = llm.bind_tools([add], tool_choice="add")
    asked = [HumanMessage("What is 2 plus 3?")]
    reply = bound.invoke(asked)
    assert [c["name"] for c in reply.tool_calls] == ["add"]
    args = reply.tool_calls[0]["args"]
    result = add.invoke(args)  # the client runs the tool, as OpenAI's semantics say
    follow = llm.bind_tools([add]).invoke([*asked, reply, ToolMessage(str(result), tool_call_id=reply.tool_calls[0]["id"])])
    assert isinstance(follow.content, str) and not follow.tool_calls


def _error(response: httpx.Response) -> dict:
    assert response.status_code == 400, response.text
    return response.json()["error"]


@pytest.mark.parametrize("body, param, words", [
    ({"tools": [{"type": "function", "function": {"name": "bad", "parameters": {"type": "object",
                                                                                  "properties": {"x": {"type": 5}}}}}]},
     "tools[0].function.parameters", "bad"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name", "nope"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name", "has space"),
    ({"messages": [*ASK, {"role": "tool", "tool_call_id": "call_missing", "content": "5"}], "tools": TOOLS},
     "messages[1].tool_call_id", "call_missing"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice",
     "response_format"),
])
def test_bad_tool_input_is_a_400_naming_the_field(server, body, param, words):
    response = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                          json={"model": MODEL, "messages": ASK, "max_tokens": 8, **body})
    error = _error(response)
    assert error["param"] == param and words in error["message"]


def test_a_remote_engine_gets_the_tools_and_its_calls_come_back(server, make_app):
    """Parlour as the remote engine of another Parlour: tools and tool messages pass through, calls return."""
    from modules.chat import PromptOptions, request_for
    from modules.presets import Preset
    from modules.turns import ToolResultPart, Turn

    app = make_app()
    app.models.load(f"remote:{MODEL}", options={"base_url": server.url + "/v1"})
    forced = {"type": "function", "function": {"name": "roll_dice"}}
    ask = [Turn.of("user", "Roll a die for me.")]

    def request(history, choice):
        request = request_for(history, PromptOptions(mode="instruct"), Preset(temperature=0, max_new_tokens=160))
        request.tools, request.tool_choice = tuple(TOOLS), choice
        return request

    def final(history, choice):
        return list(app.pipeline.stream(request(history, choice)))[-1]

    first = final(ask, forced)
    assert first.finish_reason == "tool_calls" and [c.name for c in first.tool_calls] == ["roll_dice"]
    jsonschema.validate(json.loads(first.tool_calls[0].arguments), ROLL)
    assert first.parts[-1] == first.tool_calls[0]
    call = first.tool_calls[0]
    reply = Turn("assistant", (call,))
    history = [*ask, reply, Turn("tool", (ToolResultPart(call.id, call.name, "4"),))]
    sent = app.pipeline.prepare(app.models.current(), request(history, "auto")).messages
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"] and sent[2]["tool_call_id"] == call.id
    assert sent[1]["tool_calls"][0]["function"] == {"name": "roll_dice", "arguments": call.arguments}  # JSON text
    second = final(history, choice="none")
    # the engine took the history with the call and its result (a tool message it could not match is a 400)
    assert second.finish_reason in ("stop", "length") and second.tokens and not second.tool_calls
