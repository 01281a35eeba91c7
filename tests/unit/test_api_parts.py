"""The API's building blocks without a server: request models derived from Preset, error shapes, guards."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from modules.api.errors import describe_validation
from modules.api.schemas import ChatCompletionRequest, CompletionRequest, PresetFields
from modules.api.security import ApiGuard, LocalHostOnly, host_name
from modules.presets import Preset


def test_every_preset_field_is_an_optional_request_field_with_the_same_range():
    assert set(Preset.model_fields) <= set(PresetFields.model_fields)
    for name, info in Preset.model_fields.items():
        assert PresetFields.model_fields[name].default is None
        assert PresetFields.model_fields[name].description == info.description
        bounds = {type(m).__name__: m for m in info.metadata}
        for kind, attr, step in (("Le", "le", 1), ("Ge", "ge", -1)):
            if kind in bounds:
                bad = getattr(bounds[kind], attr) + step
                with pytest.raises(ValidationError) as err:
                    CompletionRequest(prompt="x", **{name: bad})
                assert err.value.errors()[0]["loc"] == (name,)
    assert CompletionRequest(prompt="x").model_fields_set == {"prompt"}


def test_max_tokens_takes_max_new_tokens_range_and_unknown_fields_are_listed():
    with pytest.raises(ValidationError):
        ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], max_tokens=0)
    body = CompletionRequest(prompt="x", top_k=3, tfs=0.9, mirostat_mode=0, made_up_sampler=1, zzz=2)
    assert body.top_k == 3 and body.tfs == 0.9  # every Preset key is an API field
    assert body.ignored_fields() == ["made_up_sampler", "zzz"]
    both = CompletionRequest(prompt="x", stop="A", stopping_strings=["B"])  # text-generation-webui's name too
    assert both.stop_strings() == ("A", "B")


def test_validation_errors_name_the_field_as_the_client_wrote_it():
    with pytest.raises(ValidationError) as err:
        ChatCompletionRequest(messages=[{"role": "user", "content": [{"type": "image_url"}]}])
    message, param, code = describe_validation([{**e, "loc": ("body", *e["loc"])} for e in err.value.errors()])
    assert param == "messages.0.content" and "image_url" in message and code == "invalid_value"
    message, param, code = describe_validation([{"type": "json_invalid", "loc": ("body", 3), "msg": "x",
                                                 "ctx": {"error": "Expecting value"}}])
    assert code == "invalid_json" and param is None and "Expecting value" in message


@pytest.mark.parametrize("header,name", [("localhost:7860", "localhost"), ("127.0.0.1", "127.0.0.1"),
                                         ("[::1]:80", "[::1]"), ("Evil.Example:1", "evil.example"),
                                         ("localhost.evil.example", "localhost.evil.example")])
def test_host_name(header, name):
    assert host_name(header) == name


def _call(app, path="/x", headers=(), body=b"", chunks=None):
    """Run an ASGI app once; return (status, body)."""
    sent = []
    pieces = chunks if chunks is not None else [body]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "root_path": "", "method": "POST",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def _echo(scope, receive, send):
    data = b""
    while True:
        message = await receive()
        data += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": data})


def test_guard_keys_and_admin_routes():
    guard = ApiGuard(_echo, api_key="k1", admin_key="k2", max_body_bytes=100)
    assert _call(guard)[0] == 401
    assert _call(guard, headers=[("Authorization", "Bearer k1x")])[0] == 401
    assert _call(guard, headers=[("Authorization", "Bearer k1")])[0] == 200
    assert _call(guard, headers=[("Authorization", "Bearer k2")])[0] == 200
    assert _call(guard, "/internal/model/load", headers=[("Authorization", "Bearer k1")])[0] == 401
    assert _call(guard, "/internal/model/load", headers=[("Authorization", "Bearer k2")])[0] == 200
    open_guard = ApiGuard(_echo, api_key=None, admin_key=None, max_body_bytes=100)
    assert _call(open_guard)[0] == 200


def test_guard_bounds_bodies_with_or_without_content_length():
    guard = ApiGuard(_echo, api_key=None, admin_key=None, max_body_bytes=100)
    assert _call(guard, headers=[("Content-Length", "101")], body=b"x" * 101)[0] == 413
    assert _call(guard, chunks=[b"x" * 60, b"x" * 60])[0] == 413  # chunked, no length: counted as it arrives
    assert _call(guard, chunks=[b"x" * 50, b"x" * 50]) == (200, b"x" * 100)


def test_local_host_only():
    guard = LocalHostOnly(_echo)
    assert _call(guard, headers=[("Host", "127.0.0.1:7860")])[0] == 200
    assert _call(guard, headers=[("Host", "attacker.example")])[0] == 403


def test_mailbox_merges_updates_the_loop_has_not_taken_yet():
    from modules.api.runner import _END, _Mailbox
    from modules.generation import Update

    async def scenario():
        box = _Mailbox(asyncio.get_running_loop())
        for i, piece in enumerate(["a", "b", "c"], start=1):  # three tokens before the loop looks
            box.put(Update(text="abc"[:i], delta=piece, tokens=i))
        first, tail = await box.take()
        box.put(Update(text="abcd", delta="d", tokens=4, finish_reason="stop"))
        box.put(_END)
        last, end = await box.take()
        return first, tail, last, end

    first, tail, last, end = asyncio.run(scenario())
    assert (first.delta, first.text, first.tokens, tail) == ("abc", "abc", 3, [])
    assert (last.delta, last.finish_reason) == ("d", "stop") and end == [_END]


def _paced(puts: list[tuple[float, object]], hold: float) -> tuple[object, list[object], float, float]:
    """Put "a" and take it; then put `puts` (delay, item) from the loop while the next take holds until
    `hold` seconds after the first. Returns (second update, its tail, time it came, its not_before)."""
    from modules.api.runner import _Mailbox
    from modules.generation import Update

    async def scenario():
        loop = asyncio.get_running_loop()
        box = _Mailbox(loop)
        box.put(Update(text="a", delta="a", tokens=1))
        await box.take()
        not_before = loop.time() + hold
        for delay, item in puts:
            loop.call_later(delay, box.put, item)
        update, tail = await asyncio.wait_for(box.take(not_before), timeout=30)
        return update, tail, loop.time(), not_before

    return asyncio.run(scenario())


def test_paced_mailbox_holds_text_until_its_time_and_merges_what_came_meanwhile():
    from modules.generation import Update

    update, tail, came, not_before = _paced([(0.0, Update(text="ab", delta="b", tokens=2)),
                                             (0.02, Update(text="abc", delta="c", tokens=3))], hold=0.1)
    assert came >= not_before  # not handed over before its time, though "b" was there at once
    assert (update.delta, update.text, update.tokens, tail) == ("bc", "abc", 3, [])


def test_paced_mailbox_hands_over_an_ending_at_once():
    from modules.api.runner import _END
    from modules.generation import Update

    update, tail, came, not_before = _paced([(0.0, Update(text="ab", delta="b", tokens=2)),
                                             (0.01, Update(text="abc", delta="c", tokens=3, finish_reason="stop")),
                                             (0.01, _END)], hold=60)
    assert came < not_before  # the end cut the minute-long hold short
    assert (update.delta, update.finish_reason) == ("bc", "stop")
    update, tail, came, not_before = _paced([(0.0, Update(text="ab", delta="b", tokens=2)),
                                             (0.01, RuntimeError("model gone"))], hold=60)
    assert came < not_before and update.delta == "b" and isinstance(tail[0], RuntimeError)


def test_gradio_queue_still_has_the_idle_poll_parlour_slows():
    """server.calm_gradio_queue sets a Gradio attribute; if Gradio renames it, this fails (not silently)."""
    import inspect

    import gradio as gr
    from gradio.queueing import Queue

    import server

    with gr.Blocks() as blocks:
        gr.Textbox()
    blocks.queue()
    assert blocks._queue.sleep_when_free < server.QUEUE_POLL_SECONDS  # Gradio's own default (1 ms)
    assert "self.sleep_when_free" in inspect.getsource(Queue.start_processing)
    assert "self.ANAYLTICS_CACHE_FREQUENCY" in inspect.getsource(Queue.compute_analytics_summary)
    server.calm_gradio_queue(blocks)
    assert blocks._queue.sleep_when_free == server.QUEUE_POLL_SECONDS
    assert blocks._queue.ANAYLTICS_CACHE_FREQUENCY == server.NEVER
