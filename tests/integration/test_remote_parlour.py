"""The remote loader against another Parlour: its OpenAI API in a second server process."""

import pytest

from modules.generation import GenerationRequest
from modules.models import ModelError
from modules.presets import Preset

GREEDY = Preset(temperature=0.0, max_new_tokens=16, ban_eos_token=True)
KEY = "engine-key"


@pytest.fixture(scope="module")
def engine(module_server):
    """The other Parlour, with an API key; one for the whole file."""
    return module_server("--api-key", KEY)


def final(app, **request):
    return list(app.pipeline.stream(GenerationRequest(preset=GREEDY, **request)))[-1]


def test_remote_parlour_streams_the_same_text_as_local(engine, make_app):
    app = make_app()
    options = {"base_url": engine.url + "/v1", "api_key": KEY}
    from modules.loaders.remote import list_remote_models

    assert list_remote_models(options) == ["parlour-micro", "parlour-micro-gpt2"]  # it serves every model it has
    remote = app.models.load("remote:parlour-micro", options=options)
    assert remote.context_length == 2048
    local = make_app()
    local.models.load("parlour-micro")
    assert final(app, prompt="def main():").text == final(local, prompt="def main():").text
    hello = [{"role": "user", "content": "Hello"}]
    assert final(app, messages=hello).text == final(local, messages=hello).text  # the engine templated it
    assert remote.tokenize("def main():") == local.models.current().tokenize("def main():")  # via /internal/encode
    before = engine.health()["requests"]
    assert before >= 2


def test_wrong_key_or_model_is_a_clear_load_error(engine, make_app):
    app = make_app()
    with pytest.raises(ModelError, match="not answering|401"):
        app.models.load("remote:parlour-micro", options={"base_url": engine.url + "/v1", "api_key": "wrong"})
    with pytest.raises(ModelError, match="has no model 'gpt-9'"):
        app.models.load("remote:gpt-9", options={"base_url": engine.url + "/v1", "api_key": KEY})
    assert app.models.current() is None


def test_every_chat_mode_reaches_the_engine_as_messages_or_as_faithful_text(engine, make_app):
    """Chat turns go to /chat/completions as messages when messages say it all, else to /completions."""
    from modules import chat
    from modules.templates import TemplateError

    app = make_app()
    remote = app.models.load("remote:parlour-micro", options={"base_url": engine.url + "/v1", "api_key": KEY})
    sent: list[tuple[str, dict]] = []
    real = remote._stream

    def recording(path, body, cancel, text_of):  # what goes over the wire; the request still goes out
        sent.append((path, body))
        return real(path, body, cancel, text_of)

    remote._stream = recording
    local = make_app()
    local.models.load("parlour-micro")

    def reply(history, **options):
        opts = chat.resolve_options(app, "local", character="Example", **options)
        return list(app.pipeline.stream(chat.request_for(history, opts, GREEDY)))[-1].text, opts

    hi = [{"role": "user", "content": "hi"}]
    # chat mode: the character's context is the system message, the turns carry names
    text, opts = reply(hi, mode="chat")
    path, body = sent[-1]
    context = chat.substitute(app.characters.load("Example").context, opts.name1, opts.name2).strip()
    assert path == "chat/completions" and context
    assert body["messages"] == [{"role": "system", "content": context},
                                {"role": "user", "content": "hi", "name": opts.name1}]
    plain = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]
    assert text == final(local, messages=plain).text  # the engine templated exactly these messages
    # chat-instruct: one instruction holding the transcript, as the local prompt has it
    reply(hi, mode="chat-instruct")
    path, body = sent[-1]
    assert path == "chat/completions" and [m["role"] for m in body["messages"]] == ["user"]
    assert body["messages"][0]["content"].startswith("Continue the chat dialogue") and \
        f"{opts.name1}: hi\n" in body["messages"][0]["content"]
    # instruct with the model's template: system + turns
    reply(hi + [{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "more"}], mode="instruct")
    assert [m["role"] for m in sent[-1][1]["messages"]] == ["system", "user", "assistant", "user"]
    # continue needs the reply's start as text: the chat transcript goes to /completions
    text, _ = reply(hi + [{"role": "assistant", "content": "Hello"}], mode="chat", continue_last=True)
    path, body = sent[-1]
    assert path == "completions" and body["prompt"].endswith(f"{opts.name2}: Hello")  # the reply goes on from it
    # a chosen instruction template is rendered here, then sent as text
    reply(hi, mode="instruct", instruction_template="Alpaca")
    assert sent[-1][0] == "completions" and "### Instruction:" in sent[-1][1]["prompt"]
    # impersonate with the engine's own template has no text to send: a clear error, nothing sent
    count = len(sent)
    with pytest.raises(TemplateError, match="choose an instruction template"):
        reply(hi, mode="instruct", impersonate=True)
    assert len(sent) == count
