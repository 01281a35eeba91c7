"""Chat replies on the real micro model: saved as they stream, metadata that reproduces them, truncation."""

from __future__ import annotations

import threading

from modules import chat
from modules.chat import PromptOptions, ReplyTarget, preset_from_meta, resolve_options, resolve_seed, stream_reply
from modules.presets import Preset

SAMPLED = Preset(temperature=1.0, max_new_tokens=24, ban_eos_token=True)


def run(app, history, options, preset, target=None):
    return list(stream_reply(app, history, options, preset, target))


def test_reply_is_saved_with_metadata_and_reproduces_exactly(make_app):
    app = make_app()
    app.models.load("parlour-micro")
    opts = resolve_options(app, "ann", mode="instruct", character="Assistant", instruction_template="ChatML")
    chat_id = app.store.create_chat("ann", character="Assistant", mode="instruct")
    q = app.store.add_message("ann", chat_id, "user", "Tell me a story")
    reply = app.store.add_message("ann", chat_id, "assistant", "", complete=False)
    history = [{"role": "user", "content": "Tell me a story"}]
    preset = resolve_seed(SAMPLED)
    assert preset.seed >= 0
    out = run(app, history, opts, preset, ReplyTarget(app.store, "ann", chat_id, reply))
    text, last = out[-1]
    saved = app.store.path("ann", chat_id)[-1]
    assert saved.content == text and saved.complete
    meta = saved.meta
    assert meta["model"] == "parlour-micro" and meta["seed"] == preset.seed and meta["tokens"] == 24
    assert meta["mode"] == "instruct" and meta["template"] == "ChatML" and meta["prompt_tokens"] > 0
    assert meta["finish_reason"] == "length" and meta["context_length"] == 2048
    # reproduce: same saved settings, a new version under the same question, identical text
    again = app.store.add_message("ann", chat_id, "assistant", "", parent_id=q, complete=False)
    text2, _ = run(app, history, opts, preset_from_meta(meta), ReplyTarget(app.store, "ann", chat_id, again))[-1]
    assert text2 == text
    assert [m.version for m in app.store.path("ann", chat_id)] == [1, 2]


def test_truncation_is_reported_through_the_pipeline(make_app):
    app = make_app()
    app.models.load("parlour-micro")
    history = []
    for i in range(60):
        history += [{"role": "user", "content": f"question number {i} " * 5},
                    {"role": "assistant", "content": f"answer number {i} " * 5}]
    history.append({"role": "user", "content": "and finally?"})
    opts = PromptOptions(mode="chat", context="You are a test.")
    text, last = run(app, history, opts, Preset(max_new_tokens=4))[-1]
    assert last.context_length == 2048 and last.turns_dropped > 0
    assert last.prompt_tokens <= 2048 - 4
    assert "dropped" in chat.context_line(last)


def test_start_reply_with_and_continue_keep_the_prefix(make_app):
    app = make_app()
    app.models.load("parlour-micro")
    history = [{"role": "user", "content": "hi"}]
    opts = PromptOptions(mode="chat", start_reply_with="Well,")
    text, _ = run(app, history, opts, Preset(temperature=0.0, max_new_tokens=5, ban_eos_token=True))[-1]
    assert text.startswith("Well,") and len(text) > len("Well,")
    cont = PromptOptions(mode="chat", continue_last=True)
    more, _ = run(app, history + [{"role": "assistant", "content": text}], cont,
                  Preset(temperature=0.0, max_new_tokens=5, ban_eos_token=True))[-1]
    assert more.startswith(text) and len(more) > len(text)


def test_stopping_mid_reply_keeps_what_was_written(make_app):
    app = make_app()
    app.models.load("parlour-micro")
    chat_id = app.store.create_chat("ann")
    app.store.add_message("ann", chat_id, "user", "go")
    reply = app.store.add_message("ann", chat_id, "assistant", "", complete=False)
    cancel = threading.Event()
    gen = stream_reply(app, [{"role": "user", "content": "go"}], PromptOptions(),
                       Preset(max_new_tokens=2000, ban_eos_token=True), ReplyTarget(app.store, "ann", chat_id, reply),
                       cancel)
    for text, update in gen:
        if update.tokens >= 5 and text:
            break
    gen.close()  # what Stop does to the UI handler
    assert cancel.is_set()
    saved = app.store.path("ann", chat_id)[-1]
    assert saved.content == text and saved.meta["finish_reason"] == "cancelled" and saved.complete


def test_next_prompt_is_exactly_what_the_model_reads(make_app):
    app = make_app()
    app.models.load("parlour-micro")
    backend = app.models.current()
    seen: list[str] = []
    original = backend.stream

    def recording(prompt, *args, **kwargs):  # the text the backend is actually handed
        seen.append(prompt)
        return original(prompt, *args, **kwargs)

    backend.stream = recording
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
               {"role": "user", "content": "what is 2+2?"}]
    preset = Preset(max_new_tokens=2, seed=1)
    for opts in (resolve_options(app, "ann", mode="chat", character="Example", start_reply_with="Well,"),
                 resolve_options(app, "ann", mode="instruct", instruction_template="Alpaca"),
                 resolve_options(app, "ann", mode="chat-instruct", character="Assistant")):
        shown = chat.next_prompt(app, history, opts, preset, user="ann")
        run(app, history, opts, preset)
        assert seen[-1] == shown.text
        assert shown.prompt_tokens == len(backend.tokenize(shown.text)) and shown.context_length == 2048
    assert shown.text.endswith("<|im_start|>assistant\n") and "what is 2+2?" in shown.text


def test_next_prompt_without_a_model_or_text_is_a_clear_error(make_app):
    import pytest

    from modules.generation import NoModel

    app = make_app()
    with pytest.raises(NoModel, match="no model is loaded"):
        chat.next_prompt(app, [{"role": "user", "content": "hi"}], PromptOptions(), Preset())
