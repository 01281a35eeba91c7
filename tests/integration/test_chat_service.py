"""The chat-turn service on the real micro model, no browser: every Chat tab action, saved chats and
incognito ones, metadata that reproduces a reply, truncation, the exact prompt."""

from __future__ import annotations

import pytest

from modules import chat
from modules.chat import PromptOptions, resolve_options
from modules.conversation import ChatView, Setup, StopSignal, preset_from_meta
from modules.presets import Preset
from modules.turns import ReasoningPart, TextPart, Turn

SAMPLED = Preset(temperature=1.0, max_new_tokens=24, ban_eos_token=True)
GREEDY = Preset(temperature=0.0, max_new_tokens=6, ban_eos_token=True)


@pytest.fixture()
def app(make_app):
    app = make_app()
    app.models.load("parlour-micro")
    return app


def last(steps):
    step = None
    for step in steps:
        pass
    return step


def test_send_saves_the_message_and_the_reply_with_metadata_that_reproduces_it(app):
    opts = resolve_options(app, "ann", mode="instruct", character="Assistant", instruction_template="ChatML")
    setup = Setup(opts, SAMPLED, character="Assistant")
    step = last(app.chats.send("ann", ChatView(), "Tell me a story", setup))
    view = step.view
    saved = app.store.path("ann", view.chat_id)
    assert [m.role for m in saved] == ["user", "assistant"]
    assert saved[0].content == "Tell me a story"
    reply = saved[-1]
    assert reply.content == step.turns[-1].text and reply.complete
    meta = reply.meta
    assert meta["model"] == "parlour-micro" and meta["tokens"] == 24 and meta["seed"] >= 0
    assert meta["mode"] == "instruct" and meta["template"] == "ChatML" and meta["prompt_tokens"] > 0
    assert meta["finish_reason"] == "length" and meta["context_length"] == 2048
    # reproduce: the same saved settings make a new version under the same question, with identical text
    again = last(app.chats.reproduce("ann", view, setup))
    assert again.turns[-1].text == reply.content
    path = app.store.path("ann", view.chat_id)
    assert [m.version for m in path] == [1, 2] and path[-1].meta["seed"] == meta["seed"]
    assert preset_from_meta(path[-1].meta).seed == meta["seed"]


def test_regenerate_keeps_versions_and_the_arrows_browse_them(app):
    setup = Setup(PromptOptions(mode="instruct"), SAMPLED)
    view = last(app.chats.send("ann", ChatView(), "hi", setup)).view
    first = app.chats.turns("ann", view)[-1].text
    steps = list(app.chats.regenerate("ann", view, setup))
    # while it streams, the new version takes the old one's place (not shown beside it)
    assert {len(step.turns) for step in steps} == {2}
    second = steps[-1].turns[-1].text
    shown = app.chats.shown("ann", view)
    assert (shown[-1].version, shown[-1].versions) == (2, 2) and shown[-1].turn.text == second
    view = app.chats.select_version("ann", view, len(shown) - 1, -1)
    assert app.chats.turns("ann", view)[-1].text == first
    assert app.chats.version_line("ann", view)[1].startswith(f"Message {len(shown)} (assistant) · version 1/2")


def test_continue_extends_the_reply_in_place_and_start_reply_with_leads_it(app):
    setup = Setup(PromptOptions(mode="chat", start_reply_with="Well,"), GREEDY)
    view = last(app.chats.send("ann", ChatView(), "hi", setup)).view
    reply = app.chats.turns("ann", view)[-1].text
    assert reply.startswith("Well,") and len(reply) > len("Well,")
    more = last(app.chats.continue_reply("ann", view, setup)).turns[-1].text
    assert more.startswith(reply) and len(more) > len(reply)
    path = app.store.path("ann", view.chat_id)
    assert len(path) == 2 and path[-1].content == more  # the same message, grown


def test_remove_last_edit_branch_and_dummy_messages(app):
    setup = Setup(PromptOptions(mode="instruct"), GREEDY)
    view = last(app.chats.send("ann", ChatView(), "first", setup)).view
    view = last(app.chats.send("ann", view, "second", setup)).view
    view, removed = app.chats.remove_last("ann", view)
    assert removed == "second" and [t.text for t in app.chats.turns("ann", view)][0] == "first"
    view = app.chats.edit("ann", view, 0, "first, edited")
    assert app.chats.turns("ann", view)[0].text == "first, edited"
    branched = app.chats.branch("ann", view, 0)
    assert branched.chat_id != view.chat_id
    assert [t.text for t in app.chats.turns("ann", branched)] == ["first, edited"]
    view = app.chats.add_dummy("ann", view, "assistant", "a hand-written reply", setup)
    assert app.chats.turns("ann", view)[-1] == Turn("assistant", (TextPart("a hand-written reply"),))


def test_impersonate_writes_the_users_line_and_saves_nothing(app):
    setup = Setup(PromptOptions(mode="chat"), GREEDY)
    view = last(app.chats.send("ann", ChatView(), "hi", setup)).view
    before = len(app.store.path("ann", view.chat_id))
    written, update = list(app.chats.impersonate("ann", view, setup))[-1]
    assert update.finish_reason is not None and written == update.text.strip()
    assert len(app.store.path("ann", view.chat_id)) == before


def test_incognito_chats_are_never_saved(app):
    setup = Setup(PromptOptions(mode="instruct"), GREEDY, character="Example")
    view = app.chats.new_chat("ann", setup, incognito=True)
    assert view.incognito and view.turns and view.turns[0].role == "assistant"  # the greeting
    step = last(app.chats.send("ann", view, "hello", setup))
    assert [t.role for t in step.view.turns] == ["assistant", "user", "assistant"]
    regen = last(app.chats.regenerate("ann", step.view, setup)).view
    assert len(regen.turns) == 3
    assert app.store.list_chats("ann") == []
    with pytest.raises(ValueError, match="incognito"):
        app.chats.branch("ann", regen, 1)


def test_a_new_chat_with_a_character_starts_with_its_greeting(app):
    opts = resolve_options(app, "ann", mode="chat", character="Example")
    view = app.chats.new_chat("ann", Setup(opts, GREEDY, character="Example"))
    greeting = app.characters.load("Example").greeting
    assert view.chat_id is not None
    assert app.chats.turns("ann", view)[0].text == chat.substitute(greeting, opts.name1, opts.name2)
    plain = app.chats.new_chat("ann", Setup(PromptOptions(), GREEDY))
    assert plain.chat_id is None  # no greeting: the chat is saved with its first message


def test_truncation_is_reported(app):
    history = []
    for i in range(60):
        history += [Turn.of("user", f"question number {i} " * 5), Turn.of("assistant", f"answer number {i} " * 5)]
    view = ChatView(incognito=True, turns=tuple(history))
    step = last(app.chats.send("ann", view, "and finally?", Setup(PromptOptions(mode="chat", context="A test."),
                                                                  Preset(max_new_tokens=4))))
    assert step.update.context_length == 2048 and step.update.turns_dropped > 0
    assert step.update.prompt_tokens <= 2048 - 4 and "dropped" in chat.context_line(step.update)


def test_stopping_mid_reply_keeps_what_was_written(app):
    setup = Setup(PromptOptions(), Preset(max_new_tokens=2000, ban_eos_token=True))
    steps = app.chats.send("ann", ChatView(), "go", setup)
    for step in steps:
        if step.update.tokens >= 5 and step.turns[-1].text:
            break
    steps.close()  # what Stop does to the UI handler
    saved = app.store.path("ann", step.view.chat_id)[-1]
    assert saved.content.startswith(step.turns[-1].text) and saved.meta["finish_reason"] == "cancelled"
    assert saved.complete


def test_edit_keeps_a_replys_reasoning(app):
    chat_id = app.store.create_chat("ann")
    app.store.add_message("ann", chat_id, "user", "q")
    app.store.add_message("ann", chat_id, "assistant", Turn("assistant", (ReasoningPart("hmm"), TextPart("a"))))
    view = app.chats.edit("ann", ChatView(chat_id=chat_id), 1, "b")
    turn = app.chats.turns("ann", view)[1]
    assert turn.text == "b" and turn.reasoning == "hmm"


def test_next_prompt_is_exactly_what_the_model_reads(app):
    backend = app.models.current()
    seen: list[str] = []
    original = backend.stream

    def recording(prompt, *args, **kwargs):  # the text the backend is actually handed
        seen.append(prompt)
        return original(prompt, *args, **kwargs)

    backend.stream = recording
    history = [Turn.of("user", "hi"), Turn.of("assistant", "hello")]
    preset = Preset(max_new_tokens=2, seed=1)
    for opts in (resolve_options(app, "ann", mode="chat", character="Example", start_reply_with="Well,"),
                 resolve_options(app, "ann", mode="instruct", instruction_template="Alpaca"),
                 resolve_options(app, "ann", mode="chat-instruct", character="Assistant")):
        shown = chat.next_prompt(app, history + [Turn.of("user", "what is 2+2?")], opts, preset, user="ann")
        last(app.chats.send("ann", ChatView(incognito=True, turns=tuple(history)), "what is 2+2?",
                            Setup(opts, preset)))
        assert seen[-1] == shown.text
        assert shown.prompt_tokens == len(backend.tokenize(shown.text)) and shown.context_length == 2048
    assert shown.text.endswith("<|im_start|>assistant\n") and "what is 2+2?" in shown.text


def test_next_prompt_without_a_model_is_a_clear_error(make_app):
    from modules.generation import NoModel

    app = make_app()
    with pytest.raises(NoModel, match="no model is loaded"):
        chat.next_prompt(app, [Turn.of("user", "hi")], PromptOptions(), Preset())


def test_alternate_greetings_are_the_first_replys_versions(make_app, tmp_path):
    folder = tmp_path / "characters"
    folder.mkdir()
    (folder / "Mira.yaml").write_text("name: Mira\ngreeting: Ahoy {{user}}!\nalternate_greetings:\n"
                                      "- Avast, {{user}}.\n- Yo ho!\n")
    app = make_app(characters_dir=folder)
    opts = resolve_options(app, "ann", mode="chat", character="Mira")
    view = app.chats.new_chat("ann", Setup(opts, GREEDY, character="Mira"))
    first = app.chats.shown("ann", view)
    assert [(s.turn.text, s.version, s.versions) for s in first] == [("Ahoy ann!", 1, 3)]
    view = app.chats.select_version("ann", view, 0, 1)
    assert app.chats.turns("ann", view)[0].text == "Avast, ann."
    # `>` on a greeting never regenerates (there is nothing before it to answer)
    view = app.chats.select_version("ann", view, 0, 1)
    assert not app.chats.wants_regenerate("ann", view, 0, 1)
    incognito = app.chats.new_chat("ann", Setup(opts, GREEDY, character="Mira"), incognito=True)
    assert [t.text for t in incognito.turns] == ["Ahoy ann!"]


def test_next_on_the_newest_version_of_the_last_reply_regenerates(app):
    setup = Setup(PromptOptions(mode="instruct"), GREEDY)
    view = last(app.chats.send("ann", ChatView(), "hi", setup)).view
    view = last(app.chats.send("ann", view, "again", setup)).view
    assert app.chats.wants_regenerate("ann", view, 3, 1)
    assert not app.chats.wants_regenerate("ann", view, 3, -1)
    assert not app.chats.wants_regenerate("ann", view, 1, 1)  # not the last reply
    assert not app.chats.wants_regenerate("ann", view, 2, 1)  # a user message
    last(app.chats.regenerate("ann", view, setup))
    view = app.chats.select_version("ann", view, 3, -1)  # back to 1/2: `>` now browses
    assert not app.chats.wants_regenerate("ann", view, 3, 1)


def test_a_reply_stopped_before_its_first_token_is_saved_as_cancelled(app):
    steps = app.chats.send("ann", ChatView(), "go", Setup(PromptOptions(), GREEDY))
    first = next(steps)  # the message is saved
    waiting = next(steps)  # the reply has begun, no token yet
    assert waiting.update.tokens == 0 and waiting.turns[-1].role == "assistant"
    steps.close()
    view = app.chats.settled("ann", first.view)
    saved = app.store.path("ann", view.chat_id)[-1]
    assert saved.role == "assistant" and saved.complete and saved.meta["finish_reason"] == "cancelled"


def test_message_actions_from_the_page_are_checked_then_done_through_the_service(app):
    from modules.message_actions import MAX_EDIT_CHARS, MessageAction, apply

    for raw in ["", "not json", "[1]", '{"act": "explode", "index": 0}', '{"act": "edit", "index": -1}',
                '{"act": "edit", "index": true}', '{"act": "save", "index": 0, "text": 5}',
                '{"act": "save", "index": 0, "text": "' + "x" * (MAX_EDIT_CHARS + 1) + '"}']:
        with pytest.raises(ValueError, match="message action|longer than"):
            MessageAction.parse(raw)
    setup = Setup(PromptOptions(mode="instruct"), SAMPLED)
    view = last(app.chats.send("ann", ChatView(), "hi", setup)).view
    first = app.chats.turns("ann", view)[-1].text
    asked = []

    def plan():
        asked.append(True)
        return setup

    # `>` on the newest version of the last reply streams a new version
    acted = apply(app.chats, "ann", view, MessageAction.parse('{"act": "next", "index": 1}'), plan)
    assert acted.steps is not None and asked == [True]
    second = last(acted.steps).turns[-1].text
    assert [(s.version, s.versions) for s in app.chats.shown("ann", view)][-1] == (2, 2)
    acted = apply(app.chats, "ann", view, MessageAction("prev", 1), plan)
    assert acted.steps is None and app.chats.turns("ann", acted.view)[-1].text == first
    acted = apply(app.chats, "ann", view, MessageAction("next", 1), plan)  # 2/2 again, by browsing
    assert acted.steps is None and app.chats.turns("ann", acted.view)[-1].text == second and len(asked) == 1
    acted = apply(app.chats, "ann", view, MessageAction("save", 0, "hello there"), plan)
    assert acted.status == "Saved the edit." and app.chats.turns("ann", acted.view)[0].text == "hello there"
    acted = apply(app.chats, "ann", view, MessageAction("branch", 0), plan)
    assert acted.new_chat and acted.view.chat_id != view.chat_id
    assert [t.text for t in app.chats.turns("ann", acted.view)] == ["hello there"]
    assert len(app.chats.turns("ann", view)) == 2  # the original keeps both messages


def test_after_stop_says_how_far_the_reply_got(app):
    # a reply far longer than the test reads (a slow reader gets coalesced updates: it must not be over yet)
    endless = SAMPLED.model_copy(update={"max_new_tokens": 4096, "ban_eos_token": True})
    steps = app.chats.send("ann", ChatView(), "go", Setup(PromptOptions(), endless))
    for step in steps:
        if step.update.tokens >= 3:
            break
    steps.close()
    view, status = app.chats.after_stop("ann", step.view)
    tokens = app.store.path("ann", view.chat_id)[-1].meta["tokens"]
    assert status == f"Stopped after {tokens} tokens." and 3 <= tokens < endless.max_new_tokens


def test_stop_ends_the_action_the_ordinary_way_and_a_pressed_stop_cancels_its_next_request(app):
    endless = SAMPLED.model_copy(update={"max_new_tokens": 4096, "ban_eos_token": True})
    stop = StopSignal()
    steps = app.chats.send("ann", ChatView(), "go", Setup(PromptOptions(), endless, stop=stop))
    seen = []
    for step in steps:  # not closed by the reader: Stop ends the action, which saves and finishes as usual
        seen.append(step.update.tokens)
        if step.update.tokens >= 3 and not stop.pressed:
            stop.press()
    assert step.update.finish_reason == "cancelled"
    saved = app.store.path("ann", step.view.chat_id)[-1]
    assert saved.meta["finish_reason"] == "cancelled" and 3 <= saved.meta["tokens"] < endless.max_new_tokens
    assert saved.content == step.turns[-1].text != ""  # the reply ends where the page last showed it
    assert app.pipeline.stats.snapshot()["active"] == 0
    # pressed once, the action's later requests (a tool loop's next round) are cancelled before they start
    steps = app.chats.regenerate("ann", step.view, Setup(PromptOptions(), endless, stop=stop))
    final = last(steps)
    assert final.update.finish_reason == "cancelled" and final.update.tokens == 0
    # and a fresh signal (the next action's) does not stop anything
    final = last(app.chats.regenerate("ann", step.view, Setup(PromptOptions(), SAMPLED, stop=StopSignal())))
    assert final.update.finish_reason != "cancelled" and final.update.tokens > 0


def test_a_chat_keeps_its_own_model_loaded_just_in_time(make_app):
    """Several models: a chat starts with the default model and remembers it; switched to another one it
    answers with that (loaded just in time beside the first), reopened or branched it still does."""
    app = make_app(max_loaded_models=2)
    app.models.load("parlour-micro")
    setup = Setup(PromptOptions(mode="instruct"), GREEDY)
    first = last(app.chats.send("ann", ChatView(), "Hello", setup)).view
    assert first.model == "parlour-micro"
    assert app.store.path("ann", first.chat_id)[-1].meta["model"] == "parlour-micro"
    switched = app.chats.set_model("ann", first, "parlour-micro-gpt2")
    last(app.chats.send("ann", switched, "And you?", setup))
    assert app.store.path("ann", first.chat_id)[-1].meta["model"] == "parlour-micro-gpt2"
    assert app.models.get("parlour-micro") is not None and app.models.default == "parlour-micro"  # still loaded
    reopened = app.chats.open("ann", first.chat_id)
    assert reopened.model == "parlour-micro-gpt2"
    assert app.chats.branch("ann", reopened).model == "parlour-micro-gpt2"
    assert app.chats.new_chat("ann", setup).model == "parlour-micro"  # a new chat: the default model
