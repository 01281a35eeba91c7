"""The Chat tab's tool loop in the chat service, against a scripted stand-in for the pipeline (what each
generation answers is fixed), with the real registry, store and tool files: calls run and their results
join the turn, the model goes on from them; approval for tools the operator added; the per-reply limit;
what is saved, reopened, exported and imported; regenerate starts again from the user's message.
(The same loop on the real model and real MCP servers: tests/integration/test_mcp_tools.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modules.app import App
from modules.chat import PromptOptions
from modules.conversation import ChatView, Setup
from modules.presets import Preset
from modules.settings import Settings
from modules.tools.loop import ToolPlan
from modules.turns import TextPart, ToolCallPart, ToolResultPart
from tests.scripted import run, script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def app(tmp_path):
    settings = Settings(models_dir=tmp_path / "models", user_data=tmp_path / "user_data", presets_dir=ROOT / "presets",
                        settings=tmp_path / "settings.yaml", tool_calls_per_turn=3, tool_timeout=20)
    tools = settings.user_data / "tools"
    tools.mkdir(parents=True)
    (tools / "shout.py").write_text(
        "tool = {'type': 'function', 'function': {'name': 'shout', 'description': 'upper-case',\n"
        "        'parameters': {'type': 'object', 'properties': {'text': {'type': 'string'}}}}}\n"
        "def execute(arguments):\n    return arguments['text'].upper()\n")
    return App.build(settings)


def setup(*names, choice="auto") -> Setup:
    return Setup(PromptOptions(mode="instruct"), Preset(max_new_tokens=16), tools=ToolPlan(tuple(names), choice))


def test_a_builtin_call_runs_and_the_model_answers_from_its_result(app):
    pipeline = script(app, [("calculator", '{"expression": "19 + 23"}')], "The sum is 42.")
    step = run(app.chats.send("ann", ChatView(), "What is 19 + 23?", setup("calculator", choice="required")))
    reply = app.chats.turns("ann", step.view)[-1]
    call, result, text = reply.parts
    assert isinstance(call, ToolCallPart) and call.name == "calculator"
    assert isinstance(result, ToolResultPart) and result.call_id == call.id and result.content == "42"
    assert not result.error and result.seconds is not None and text == TextPart("The sum is 42.")
    first, second = pipeline.requests
    assert [t["function"]["name"] for t in first.tools] == ["calculator"] and first.tool_choice == "required"
    assert second.tool_choice == "auto"  # a forced call holds for the first generation only
    # the model goes on from the turn so far: the question, then its call with the result
    assert [t.role for t in second.history] == ["user", "assistant"]
    assert second.history[-1].parts[:2] == (call, result) and not second.options.continue_last
    # saved with the reply; reopening the chat shows them; the chat remembers its tools
    saved = app.store.path("ann", step.view.chat_id)[-1]
    assert saved.as_turn().parts == reply.parts and saved.meta["finish_reason"] == "stop"
    assert app.chats.tool_plan("ann", step.view) == ToolPlan(("calculator",), "required")
    reopened = app.chats.shown("ann", app.chats.open("ann", step.view.chat_id))
    assert reopened[-1].turn.parts == reply.parts


def test_errors_go_back_to_the_model_as_results(app):
    script(app, [("calculator", '{"expression": 2+'), ("calculator", '{"expression": "2 ** 99999"}'),
                 ("vanished_tool", "{}")], "Sorry.")
    step = run(app.chats.send("ann", ChatView(), "compute", setup("calculator")))
    results = step.turns[-1].of_type(ToolResultPart)
    assert [r.error for r in results] == [True, True, True]
    assert "not valid JSON" in results[0].content and "exponents are limited" in results[1].content
    assert "no tool named 'vanished_tool'" in results[2].content
    assert step.turns[-1].text == "Sorry."


def test_user_file_tools_wait_for_approval(app):
    pipeline = script(app, [("shout", '{"text": "hey"}')], "Shouted.", [("shout", '{"text": "again"}')], "Twice.",
                      [("shout", '{"text": "no"}')], "Fine.")
    plan = setup("shout", "calculator")
    step = run(app.chats.send("ann", ChatView(), "shout hey", plan))
    view = step.view
    waiting = app.chats.awaiting("ann", view)
    assert [c.name for c in waiting] == ["shout"] and len(pipeline.requests) == 1
    saved = app.store.path("ann", view.chat_id)[-1]
    assert saved.meta["awaiting_approval"] is True and saved.meta["finish_reason"] == "tool_calls"
    step = run(app.chats.answer_calls("ann", view, plan, "approve"))
    reply = step.turns[-1]
    assert reply.of_type(ToolResultPart)[0].content == "HEY" and reply.text == "Shouted."
    assert app.chats.awaiting("ann", view) == [] and app.store.path("ann", view.chat_id)[-1].meta["awaiting_approval"] is False
    # "always": this call runs, and later ones in this chat run without asking
    run(app.chats.send("ann", view, "again", plan))
    step = run(app.chats.answer_calls("ann", view, plan, "always"))
    assert step.turns[-1].text == "Twice." and app.chats.tool_plan("ann", view).always == ("shout",)
    step = run(app.chats.send("ann", view, "once more", plan))
    assert step.turns[-1].of_type(ToolResultPart)[0].content == "NO" and app.chats.awaiting("ann", view) == []
    with pytest.raises(ValueError, match="no tool call is waiting"):
        run(app.chats.answer_calls("ann", view, plan, "approve"))


def test_a_rejected_call_and_one_left_unanswered(app):
    script(app, [("shout", '{"text": "a"}')], "Not shouting.", [("shout", '{"text": "b"}')], "ok")
    plan = setup("shout")
    view = run(app.chats.send("ann", ChatView(), "shout", plan)).view
    step = run(app.chats.answer_calls("ann", view, plan, "reject"))
    result = step.turns[-1].of_type(ToolResultPart)[0]
    assert result.error and "declined" in result.content and step.turns[-1].text == "Not shouting."
    run(app.chats.send("ann", view, "shout again", plan))
    assert app.chats.awaiting("ann", view)
    run(app.chats.send("ann", view, "never mind", plan))  # writing again answers the waiting call "not run"
    turns = app.chats.turns("ann", view)
    left = turns[-3].of_type(ToolResultPart)[0]
    assert left.error and "moved on" in left.content


def test_the_per_reply_limit_makes_the_model_answer_in_words(app):
    always_calls = [("calculator", '{"expression": "1+1"}')] * 2
    pipeline = script(app, always_calls, always_calls, always_calls)
    step = run(app.chats.send("ann", ChatView(), "loop", setup("calculator", choice="required")))
    results = step.turns[-1].of_type(ToolResultPart)
    # limit 3: three calls run, the fourth is refused; the next generation gets tool_choice none, and
    # its calls (a model that ignores it) are refused too; then the reply ends
    assert [r.error for r in results] == [False, False, False, True, True, True]
    assert "limit of 3 tool calls" in results[-1].content
    assert [r.tool_choice for r in pipeline.requests] == ["required", "auto", "none"]


def test_regenerate_reruns_the_tools_from_the_users_message(app):
    pipeline = script(app, [("calculator", '{"expression": "2*3"}')], "Six.", [("calculator", '{"expression": "3*2"}')],
                      "Still six.")
    view = run(app.chats.send("ann", ChatView(), "2 times 3?", setup("calculator"))).view
    step = run(app.chats.regenerate("ann", view, setup("calculator")))
    assert [t.role for t in pipeline.requests[2].history] == ["user"]
    assert step.turns[-1].of_type(ToolResultPart)[0].content == "6" and step.turns[-1].text == "Still six."
    shown = app.chats.shown("ann", view)
    assert (shown[-1].version, shown[-1].versions) == (2, 2)


def test_calls_and_the_tools_survive_export_and_import(app):
    script(app, [("calculator", '{"expression": "5*5"}')], "25.")
    view = run(app.chats.send("ann", ChatView(), "5 squared", setup("calculator", choice="required"))).view
    exported = json.loads(json.dumps(app.store.export_chat("ann", view.chat_id)))
    copy = app.store.import_chat("bob", exported)
    turns = app.chats.turns("bob", ChatView(chat_id=copy))
    assert turns[-1].parts == app.chats.turns("ann", view)[-1].parts
    assert app.chats.tool_plan("bob", ChatView(chat_id=copy)).names == ("calculator",)


def test_incognito_chats_run_tools_and_keep_nothing(app):
    script(app, [("roll_dice", '{"dice": "1d2+4"}')], "You rolled.")
    before = app.store.list_chats("ann")
    step = run(app.chats.send("ann", ChatView(incognito=True), "roll", setup("roll_dice")))
    assert json.loads(step.turns[-1].of_type(ToolResultPart)[0].content)["total"] >= 5
    assert step.view.turns[-1].text == "You rolled." and app.store.list_chats("ann") == before


def test_only_available_tools_can_be_ticked(app):
    script(app, "hello")
    view = run(app.chats.send("ann", ChatView(), "hi", setup())).view
    assert app.chats.set_tools("ann", view, ["calculator", "shout"], "auto").names == ("calculator", "shout")
    with pytest.raises(ValueError, match="no such tool: rm_rf"):
        app.chats.set_tools("ann", view, ["rm_rf"])
    with pytest.raises(ValueError, match="tool_choice"):
        app.chats.set_tools("ann", view, ["calculator"], "shout")
    assert app.chats.tool_plan("ann", view).names == ("calculator", "shout")
