"""How the Chat tab shows a chat: bubbles (with reasoning blocks and each message's actions), status
lines, the chat list.

Presentation only: what to show comes from the chat service (modules/conversation.py). Bubbles hold
HTML rendered and sanitized on the server (modules/render.py). Each finished message ends with its
action bar (version arrows, Edit, Copy, Branch here, Regenerate): plain buttons whose class names say
what they do and which message they belong to (`act-next`, `mi-3`), because Gradio's own sanitizer
keeps class names but drops data-* attributes; modules/ui/page.js turns a click into a call of the
hidden message-action event (modules/ui/chat_actions.py).
"""

from __future__ import annotations

import dataclasses
import functools
import html
import logging
from typing import Any

import gradio as gr
from pydantic import ValidationError

from modules.app import App
from modules.characters import CharacterError
from modules.chat import ContextOverflow, context_line
from modules.conversation import ChatView, Shown, StopSignal
from modules.generation import GenerationError, NoModel, QueueFull
from modules.models import ModelError
from modules.store import ChatNotFound, StoreError
from modules.templates import TemplateError
from modules.render import literal, render_extension_html, render_footer, render_markdown, render_reasoning
from modules.turns import ReasoningPart, TextPart, ToolCallPart, ToolResultPart, Turn

log = logging.getLogger(__name__)
#: template variables the Chat tab has a control for, shown only when the model's template reads them
THINKING_VARS = ("enable_thinking", "reasoning_effort")
EXPECTED_ERRORS = (NoModel, QueueFull, GenerationError, TemplateError, ContextOverflow, CharacterError, ChatNotFound,
                   StoreError, ValueError, ModelError)


def guarded(fn):
    """Expected errors become a warning and a status line (the 5th of the chat outputs), never a crashed event."""
    @functools.wraps(fn)  # Gradio reads the wrapped signature (gr.Request, SelectData)
    def wrapper(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
            if result is None:  # nothing to change
                return
            if hasattr(result, "__next__"):
                yield from result
            else:
                yield result
        except ValidationError as exc:
            first = exc.errors()[0]
            gr.Warning(f"invalid parameters: {first['loc'][0] if first['loc'] else ''}: {first['msg']}")
            yield (gr.skip(),) * 4 + (f"⚠️ invalid parameters: {first['msg']}",) + (gr.skip(),) * 2
        except EXPECTED_ERRORS as exc:
            gr.Warning(literal(exc))
            yield (gr.skip(),) * 4 + (f"⚠️ {literal(exc)}",) + (gr.skip(),) * 2
    return wrapper


def user_of(request: gr.Request | None) -> str:
    """The logged-in user, or "local" when the server runs without --auth."""
    return (getattr(request, "username", None) or "local") if request is not None else "local"


@dataclasses.dataclass
class Page:
    """One open page (a browser tab). Gradio hands each event the state object itself, not a copy, and
    every session dict made from it carries this same Page on, so what one event marks here an event
    still running sees at once: the page-load event looks at `chosen` when it starts and again when its
    answer is ready (modules/ui/chat.py `on_load`). A new page gets its own (Gradio deep-copies the
    state's first value for each page)."""

    chosen: bool = False  # an event of the user's has put a chat on this page (session_of)
    #: Stop for the reply action running on this page: each action makes its own (`stoppable`), the Stop
    #: button presses the newest
    stop: StopSignal | None = None


def stoppable(sess: dict[str, Any]) -> StopSignal:
    """A Stop signal for the action starting on this page, which the page's Stop button presses."""
    page = sess.get("page")
    signal = StopSignal()
    if isinstance(page, Page):
        page.stop = signal
    return signal


def stop_page(sess: dict[str, Any]) -> None:
    """Stop pressed: the page's running reply action ends within a token (nothing, when none runs)."""
    page = sess.get("page")
    if isinstance(page, Page) and page.stop is not None:
        page.stop.press()


def stopped(sess: dict[str, Any]) -> bool:
    page = sess.get("page")
    return isinstance(page, Page) and page.stop is not None and page.stop.pressed


def new_session(incognito: bool = False, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-browser state for a freshly opened chat; display choices and the Page carry over from
    `previous`."""
    previous = previous or {}
    return {"chat_id": None, "incognito": incognito, "turns": (), "selected": None,
            "images": bool(previous.get("images")), "model": previous.get("model"),
            "page": previous.get("page") or Page()}


def view_of(session: dict[str, Any]) -> ChatView:
    return ChatView(chat_id=session.get("chat_id"), incognito=bool(session.get("incognito")),
                    turns=tuple(session.get("turns") or ()), selected=session.get("selected"),
                    model=session.get("model"))


def session_of(view: ChatView, previous: dict[str, Any], chosen: bool = True) -> dict[str, Any]:
    """The state of a page showing `view`. `chosen`: the user's event put it there (marked on the Page,
    so the page-load event then leaves the page alone); False only for the page-load event's own pick."""
    page = previous.get("page") or Page()
    if chosen:
        page.chosen = True  # only ever set: two events marking at once cannot undo each other
    return {**previous, "chat_id": view.chat_id, "incognito": view.incognito, "turns": view.turns,
            "selected": view.selected, "model": view.model, "page": page}


def speed_line(tokens: int, seconds: float, first: float | None, prompt_tokens: int, reason: str | None) -> str:
    rate = tokens / seconds if seconds > 0 else 0.0
    parts = [f"{tokens} tokens", f"{rate:.1f} tok/s"]
    if first is not None:
        parts.append(f"first token {first * 1000:.0f} ms")
    parts.append(f"prompt {prompt_tokens} tokens")
    if reason:
        parts.append({"stop": "finished", "length": "hit max_new_tokens", "cancelled": "stopped"}.get(reason, reason))
    return " · ".join(parts)


WAITING = "Waiting for the model…"
#: the events that send choices to the lists of characters run one at a time, in the order they were
#: asked for: a Dropdown given new choices without a value shows an empty box when its value is not among
#: them, so the page-load's list (read before a card was imported) arriving after the import's own answer
#: would blank the character the import had just picked (seen under load in CI)
CHARACTER_LISTS: dict[str, Any] = dict(concurrency_id="character-lists", concurrency_limit=1)


def waiting(update: Any) -> bool:
    """Between Send and the first token: the request waits in the queue or the prompt is being read."""
    return update.queue_position > 0 or (update.tokens == 0 and update.finish_reason is None and not update.text
                                         and not update.reasoning)


def status_line(update: Any) -> str:
    if update.queue_position:
        if update.loading:
            return f"{WAITING} Loading {literal(update.loading)}: position {update.queue_position} in its queue."
        return f"{WAITING} Position {update.queue_position} in the queue."
    if waiting(update):
        return WAITING
    line = speed_line(update.tokens, update.seconds, update.first_token_seconds, update.prompt_tokens,
                      update.finish_reason)
    ctx = context_line(update)
    return f"{line} · {ctx}" if ctx else line


def _reasoning_title(part: ReasoningPart, thinking: bool) -> str:
    if thinking:
        return "Thinking…"
    facts = [f"{part.seconds:.1f} s" if part.seconds else "", f"{part.tokens} tokens" if part.tokens else ""]
    facts_text = ", ".join(f for f in facts if f)
    head = "Thought (cut off)" if not part.complete else "Thought"
    return f"{head} · {facts_text}" if facts_text else head


#: the most characters of a tool's arguments or result shown in its block (the rest is in the chat export)
SHOWN_TOOL_CHARS = 20_000


def _clip(text: str) -> str:
    return text if len(text) <= SHOWN_TOOL_CHARS else text[:SHOWN_TOOL_CHARS] + f"\n… ({len(text):,} characters)"


def tool_call_html(call: ToolCallPart, result: ToolResultPart | None) -> str:
    """A tool call as a collapsible block: the tool's name and seconds (or why it has no result yet),
    its arguments and its result (an error marked as one). Everything is escaped text."""
    if result is None:
        title, css = f"⏳ {call.name} · not run yet", "waiting"
    else:
        took = f" · {result.seconds:.2f} s" if result.seconds is not None else ""
        title, css = (f"⚠️ {call.name} · error{took}", "error") if result.error else \
            (f"🔧 {call.name}{took}", "done")
    body = (f'<div class="tool-label">Arguments</div>'
            f'<pre class="tool-arguments">{html.escape(_clip(call.arguments))}</pre>')
    if result is not None:
        body += (f'<div class="tool-label">{"Error" if result.error else "Result"}</div>'
                 f'<pre class="tool-result">{html.escape(_clip(result.content))}</pre>')
    return (f'<details class="tool-call tool-{css}" data-tool="{html.escape(call.name, quote=True)}">'
            f'<summary>{html.escape(title)}</summary>{body}</details>')


def bubble_html(turn: Turn, images: bool, thinking: bool = False) -> str:
    """One message as HTML: its reasoning blocks (open while the model is thinking, collapsed once the
    answer starts), its text, its tool calls with their results, and an extension's reply footer."""
    out = []
    shown = turn.extras.get("shown")  # an extension's output_modifier HTML replaces the words on screen
    last_reasoning = max((i for i, p in enumerate(turn.parts) if isinstance(p, ReasoningPart)), default=-1)
    results = {p.call_id: p for p in turn.parts if isinstance(p, ToolResultPart)}  # shown with their calls
    for i, part in enumerate(turn.parts):
        if isinstance(part, ReasoningPart) and part.text:
            live = thinking and i == last_reasoning
            out.append(render_reasoning(part.text, _reasoning_title(part, live), open_=live, allow_images=images))
        elif isinstance(part, TextPart) and part.text and not shown:
            out.append(render_markdown(part.text, allow_images=images))
        elif isinstance(part, ToolCallPart):
            out.append(tool_call_html(part, results.get(part.id)))
    if shown:
        out.append(render_extension_html(shown, allow_images=images))
    return "".join(out) + render_footer(turn.extras.get("footer", ""))


def _button(act: str, title: str, off: bool = False) -> str:
    return f'<button type="button" class="msg-act act-{act}{" off" if off else ""}" title="{title}"></button>'


def action_bar(index: int, item: Shown, last: bool, regenerate: bool = True) -> str:
    """The buttons under one message. Version arrows where there are versions (and always on the last
    reply of a saved chat, whose `>` at the newest version makes a new one); Regenerate on the last reply."""
    reply = item.turn.role == "assistant"
    parts = []
    if item.id is not None and (item.versions > 1 or (last and reply and regenerate)):
        facts = html.escape(meta_line(item), quote=True)
        at_newest = item.version >= item.versions
        parts += [_button("prev", "Previous version", off=item.version <= 1),
                  f'<span class="msg-version" title="{facts}">{item.version}/{item.versions}</span>',
                  _button("next", "New version (regenerate)" if at_newest and last and reply and regenerate
                          else "Next version", off=at_newest and not (last and reply and regenerate))]
    parts += [_button("edit", "Edit"), _button("copy", "Copy")]
    if item.id is not None:
        parts.append(_button("branch", "Branch here: a new chat up to this message"))
    if last and reply and regenerate:
        parts.append(_button("regenerate", "Regenerate"))
    return f'<div class="msg-actions mi-{index}">{"".join(parts)}</div>'


def meta_line(item: Shown) -> str:
    """What a message's version label tells on hover: model, seed, tokens."""
    line = f"version {item.version} of {item.versions}"
    if item.meta.get("model"):
        line += f" · {item.meta['model']}, seed {item.meta.get('seed')}, {item.meta.get('tokens')} tokens"
    return line


def bubbles(turns: list[Turn], session: dict[str, Any], thinking: bool = False, shown: list[Shown] | None = None,
            live: bool = False, wait: bool = False) -> list[dict[str, str]]:
    """Chatbot messages for `turns`; `thinking`: the last one is a reply still inside its reasoning.
    `shown` (the service's view of the same messages) adds each message's action bar; `live`: the last
    message is still being written (no actions yet); `wait`: it has no token yet (a waiting indicator)."""
    images = bool(session.get("images"))
    visible = [t for t in turns if t.role in ("user", "assistant")]
    out = []
    indicator = f'<div class="waiting-indicator"><span class="dots"></span>{WAITING}</div>'
    for i, turn in enumerate(visible):
        last = i == len(visible) - 1
        content = bubble_html(turn, images, thinking and last)
        if last and wait and turn.role == "assistant":
            content += indicator
        elif shown is not None and i < len(shown) and not (last and live) and shown[i].turn.role == turn.role:
            content += action_bar(i, shown[i], last and i == len(shown) - 1, regenerate=i > 0)
        out.append({"role": turn.role, "content": content})
    if wait and (not visible or visible[-1].role != "assistant"):
        out.append({"role": "assistant", "content": indicator})  # the reply's place, before it has a word
    return out


def chat_choices(app: App, user: str, character: str | None, query: str = "") -> list[tuple[str, str]]:
    if query.strip():
        found = app.store.search(user, query)
        return [(f"{c.title or 'Untitled'} — {snip[:60]}", str(c.id)) for c, snip in found]
    return [(f"{c.title or 'Untitled'} · {c.mode}", str(c.id))
            for c in app.store.list_chats(user, character=character or "")]


def avatars(app: App, character: str | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The chatbot's (user, bot) avatars: the character's picture, as a data: URL (nothing is served from
    disk). A missing or unreadable picture means no avatar; the chat itself is never affected."""
    url = None
    if character:
        try:
            url = app.characters.avatar(character)
        except CharacterError as exc:
            log.warning("no avatar: %s", exc)
    # Not marked as gradio.FileData: Gradio would then try to copy a file at `path` into its cache.
    bot = {"path": url, "url": url} if url else None
    return None, bot


def redraw(app: App, user: str, session: dict[str, Any], character: str | None, status: Any = "",
           text: Any = None, query: str = "", wait: bool = False) -> tuple:
    """The standard outputs: input, chatbot, state, chat list, status, selected info, edit box.
    `wait`: a reply has been asked for and has no token yet (a waiting indicator in its place)."""
    view = view_of(session)
    shown = app.chats.shown(user, view)
    index, info = app.chats.version_line(user, view)
    info = literal(info)  # it quotes the model's name
    edit = shown[index].turn.text if index is not None else ""
    choices = chat_choices(app, user, character, query)
    value = str(session["chat_id"]) if session["chat_id"] is not None else None
    chatbot = gr.Chatbot(value=bubbles([s.turn for s in shown], session, shown=shown, wait=wait),
                         avatar_images=avatars(app, character))
    return (gr.skip() if text is None else text, chatbot, session, gr.Radio(choices=choices, value=value), status,
            info, edit)


def thinking_controls(app: App, model: str | None) -> tuple[Any, Any]:
    """The Thinking checkbox and Reasoning effort dropdown, visible only when the template of the chat's
    model (`model`; None: the default model) reads `enable_thinking` / `reasoning_effort`. A model not
    loaded yet shows neither (its template is read when it loads)."""
    backend = app.models.get(model)
    template = backend.chat_template if backend is not None else None
    return tuple(gr.update(visible=bool(template and template.uses(name))) for name in THINKING_VARS)  # type: ignore[return-value]


def template_vars(enable_thinking: bool, effort: str) -> dict[str, Any]:
    """The switches, for whichever model the chat uses: a template that does not read one ignores it, and
    the chat's model may be another than the default one, or not loaded yet (so its template is unknown
    here). The controls are shown only for a template that reads them."""
    thinking, reasoning_effort = THINKING_VARS
    return {thinking: bool(enable_thinking), reasoning_effort: effort}
