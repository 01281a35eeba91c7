"""Chat tab: send, stop, regenerate, continue, remove last, new chat.

The conversation lives in a per-browser `gr.State` as plain {"role", "content"} messages (strings,
not Gradio's content parts) and is shown in the Chatbot. Each reply creates its own cancel Event;
Stop cancels the Gradio event, which closes the handler's generator, whose `finally` sets the Event.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator

import gradio as gr
from pydantic import ValidationError

from modules.app import App
from modules.generation import GenerationError, GenerationRequest, NoModel, QueueFull, throttle
from modules.templates import TemplateError
from modules.ui.parameters import ParameterControls

Message = dict[str, str]


def speed_line(tokens: int, seconds: float, first: float | None, prompt_tokens: int, reason: str | None) -> str:
    rate = tokens / seconds if seconds > 0 else 0.0
    parts = [f"{tokens} tokens", f"{rate:.1f} tok/s"]
    if first is not None:
        parts.append(f"first token {first * 1000:.0f} ms")
    parts.append(f"prompt {prompt_tokens} tokens")
    if reason:
        parts.append({"stop": "finished", "length": "hit max_new_tokens", "cancelled": "stopped"}.get(reason, reason))
    return " · ".join(parts)


def stream_reply(app: App, history: list[Message], preset_values: tuple[Any, ...], params: ParameterControls,
                 continue_last: bool = False) -> Iterator[tuple[list[Message], str]]:
    """Yield (history with the growing reply, status line) while the model answers."""
    try:
        preset = params.preset_from(preset_values)
    except ValidationError as exc:
        yield history, f"⚠️ invalid parameters: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}"
        return
    cancel = threading.Event()
    request = GenerationRequest(preset=preset, messages=history, cancel=cancel, continue_last=continue_last)
    prefix = history[-1]["content"] if continue_last else ""
    base = history[:-1] if continue_last else history
    reply: list[Message] = history
    try:
        for update in throttle(app.pipeline.stream(request), app.settings.stream_fps):
            if update.queue_position:
                yield history, f"⏳ waiting for the model: position {update.queue_position} in the queue"
                continue
            reply = base + [{"role": "assistant", "content": prefix + update.text}]
            status = speed_line(update.tokens, update.seconds, update.first_token_seconds, update.prompt_tokens,
                                update.finish_reason)
            yield reply, status
    except (NoModel, QueueFull, GenerationError, TemplateError, ValueError) as exc:
        gr.Warning(str(exc))
        yield reply, f"⚠️ {exc}"
    finally:
        cancel.set()


def render(app: App, params: ParameterControls) -> dict[str, Any]:
    history = gr.State([])
    chatbot = gr.Chatbot(elem_id="chatbot", label="Chat", height="62vh", buttons=["copy"],
                         placeholder="Say hello to start a chat.", layout="bubble")
    status = gr.Markdown(elem_id="chat-status")
    with gr.Row(elem_id="chat-input-row"):
        text = gr.Textbox(elem_id="chat-input", show_label=False, placeholder="Send a message (Enter)",
                          lines=1, max_lines=12, scale=10, autofocus=True)
        with gr.Column(scale=1, min_width=110):
            send = gr.Button("Send", variant="primary", elem_id="send")
            stop = gr.Button("Stop", variant="stop", elem_id="stop")
    with gr.Row(elem_id="chat-actions"):
        regenerate = gr.Button("Regenerate", elem_id="regenerate", size="sm")
        cont = gr.Button("Continue", elem_id="continue", size="sm")
        remove = gr.Button("Remove last", elem_id="remove-last", size="sm")
        new = gr.Button("New chat", elem_id="new-chat", size="sm")

    def on_send(message: str, hist: list[Message], *values: Any):
        if not message.strip():
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        hist = hist + [{"role": "user", "content": message}]
        yield "", hist, hist, "…"
        for new_hist, line in stream_reply(app, hist, values, params):
            yield gr.skip(), new_hist, new_hist, line

    def on_regenerate(hist: list[Message], *values: Any):
        if hist and hist[-1]["role"] == "assistant":
            hist = hist[:-1]
        if not hist:
            yield gr.skip(), gr.skip(), "Nothing to regenerate."
            return
        yield hist, hist, "…"
        for new_hist, line in stream_reply(app, hist, values, params):
            yield new_hist, new_hist, line

    def on_continue(hist: list[Message], *values: Any):
        if not hist or hist[-1]["role"] != "assistant":
            yield gr.skip(), gr.skip(), "Nothing to continue: the last message is not a reply."
            return
        for new_hist, line in stream_reply(app, hist, values, params, continue_last=True):
            yield new_hist, new_hist, line

    def on_remove(hist: list[Message]):
        if not hist:
            return gr.skip(), gr.skip(), gr.skip(), "Nothing to remove."
        last_user = ""
        while hist and hist[-1]["role"] == "assistant":
            hist = hist[:-1]
        if hist and hist[-1]["role"] == "user":
            last_user, hist = hist[-1]["content"], hist[:-1]
        return last_user, hist, hist, ""

    inputs = [text, history, *params.inputs]
    outputs = [text, chatbot, history, status]
    sent = [
        text.submit(on_send, inputs, outputs, concurrency_limit=None, api_name="chat_send"),
        send.click(on_send, inputs, outputs, concurrency_limit=None, api_visibility="private"),
        regenerate.click(on_regenerate, [history, *params.inputs], [chatbot, history, status],
                         concurrency_limit=None, api_name="chat_regenerate"),
        cont.click(on_continue, [history, *params.inputs], [chatbot, history, status], concurrency_limit=None,
                   api_name="chat_continue"),
    ]
    stop.click(None, None, None, cancels=sent, api_visibility="private")
    remove.click(on_remove, history, outputs, api_name="chat_remove_last")
    new.click(lambda: ([], [], ""), None, [chatbot, history, status], api_name="chat_new")
    return {"chatbot": chatbot, "history": history, "input": text}
