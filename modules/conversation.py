"""The chat-turn service: every action on a chat, for the Chat tab and anyone else, without Gradio.

    service = ChatService(app)
    view = service.new_chat("ann", Setup(options, preset, character="Assistant"))
    for step in service.send("ann", view, "Hello!", setup):
        show(step.turns, step.update)          # the conversation as it streams
    view = step.view

A `ChatView` is what one browser has open: a saved chat (its id) or an incognito one (its turns live
in the view and are never saved), the selected message, and the model the chat answers with (a saved
chat remembers it in its settings; None: the default model). Every action takes the view and returns
a new one; nothing here keeps state between calls, so the UI keeps the view in a `gr.State` and tests
drive the service directly.

A reply streams through the one pipeline (`modules.generation`): `Pipeline.begin` runs the turn's
extension hooks once (state_modifier, then chat_input_modifier and input_modifier on the new
message), the user's message is saved as the hooks left it, and the reply is saved as it streams
(modules/store.py's ReplyWriter) with everything needed to reproduce it in its metadata.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

from modules import limits
from modules.characters import add_greetings, greetings
from modules.chat import PromptOptions, request_for, resolve_seed
from modules.generation import Update
from modules.presets import Preset
from modules.store import ChatNotFound, ReplyWriter
from modules.tools import loop as tool_loop
from modules.tools.loop import ToolPlan
from modules.turns import TextPart, ToolCallPart, Turn


class StopSignal:
    """Stop, for the replies one action makes: pressing it cancels the model request running now and any
    the action starts after it (a tool loop's next round), and the action then ends the ordinary way, its
    reply saved and shown as stopped. The Chat tab makes one per action (modules/ui/chat_view.py Page):
    a Stop ends the action in the service rather than having Gradio cancel the event, because a page's
    next Send, pressed while Gradio's cancel is still under way, waits for that event's end and was
    lost when Gradio cancelled it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[threading.Event] = set()
        self.pressed = False

    def press(self) -> None:
        with self._lock:
            self.pressed = True
            live = list(self._live)
        for cancel in live:
            cancel.set()

    @contextmanager
    def watching(self, cancel: threading.Event) -> Iterator[None]:
        """While inside, a press sets `cancel` (at once, if Stop was already pressed)."""
        with self._lock:
            self._live.add(cancel)
            if self.pressed:
                cancel.set()
        try:
            yield
        finally:
            with self._lock:
                self._live.discard(cancel)

    def __deepcopy__(self, memo: dict) -> "StopSignal":
        return StopSignal()  # a copy belongs to another page: its Stop is its own


@dataclass(frozen=True)
class ChatView:
    chat_id: int | None = None
    incognito: bool = False
    turns: tuple[Turn, ...] = ()  # incognito chats only
    selected: int | None = None
    model: str | None = None  # the chat's model (None: the default one); loaded just in time


@dataclass(frozen=True)
class Setup:
    """How the next reply is made: prompt options, sampling (seed still open), template variables
    (enable_thinking, reasoning_effort), and for a new saved chat its character and mode."""

    options: PromptOptions
    preset: Preset
    template_vars: dict[str, Any] = field(default_factory=dict)
    character: str = ""
    #: the tools this chat may call (ticked in the sidebar) and how the first call is chosen
    tools: ToolPlan = field(default_factory=ToolPlan)
    #: Stop for this action's replies (None: only closing the generator stops them)
    stop: StopSignal | None = None


@dataclass(frozen=True)
class Shown:
    """One message on screen: its turn, its id (None in an incognito chat) and which version it is."""

    turn: Turn
    id: int | None = None
    version: int = 1
    versions: int = 1
    meta: dict[str, Any] = field(default_factory=dict)
    complete: bool = True


@dataclass(frozen=True)
class Step:
    """One moment of a streaming action: the view, the conversation to show, the pipeline's update."""

    view: ChatView
    turns: list[Turn]
    update: Update


def reply_meta(options: PromptOptions, preset: Preset) -> dict[str, Any]:
    """What a reply's metadata records before generation, enough to reproduce it."""
    return {"preset": preset.model_dump(), "seed": preset.seed, "mode": options.mode,
            "template": options.template_name or ("model" if options.instruction_template is None else "custom"),
            "character": options.name2, "started": time.time()}


def final_meta(update: Update) -> dict[str, Any]:
    return {"model": update.model, "tokens": update.tokens, "prompt_tokens": update.prompt_tokens,
            "seconds": round(update.seconds, 3), "first_token_seconds": update.first_token_seconds,
            "finish_reason": update.finish_reason, "finished": time.time(),
            "context_length": update.context_length, "turns_dropped": update.turns_dropped,
            "footer": update.footer}  # extensions' reply_footer, shown under the reply


def preset_from_meta(meta: dict[str, Any]) -> Preset:
    """The exact preset (seed included) a saved reply was generated with, for "reproduce"."""
    values = meta.get("preset")
    if not isinstance(values, dict):
        raise ValueError("this reply has no saved settings to reproduce")
    return Preset.model_validate(values)


def reply_turn(update: Update, prefix: Turn | None = None) -> Turn:
    """The reply as a turn: the update's parts (the model's own words), after `prefix`'s (a continued
    reply, "start reply with"). When an extension's output_modifier changed the finished reply
    (text-generation-webui's internal vs visible text), what it shows rides along as `shown`."""
    calls = tool_loop.calls_of(update)
    parts = update.parts or ((TextPart(update.text),) if update.text or not calls else ())
    if prefix is not None:
        head = list(prefix.parts)
        if head and isinstance(head[-1], TextPart) and parts and isinstance(parts[0], TextPart):
            parts = (TextPart(head[-1].text + parts[0].text), *parts[1:])
            head = head[:-1]
        parts = (*head, *parts)
    extras: dict[str, Any] = {"footer": update.footer} if update.footer else {}
    if update.raw_text is not None and update.text != update.raw_text:
        head = prefix.text if prefix is not None else ""
        extras["shown"] = head + update.text
    return tool_loop.with_calls(Turn("assistant", tuple(parts), extras=extras), calls)


class ChatService:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.store = app.store

    # -- reading ------------------------------------------------------------------------------------
    def shown(self, user: str, view: ChatView) -> list[Shown]:
        """The conversation on screen (user and assistant messages), oldest first."""
        if view.incognito or view.chat_id is None:
            return [Shown(t) for t in view.turns]
        path = self.store.path(user, view.chat_id)
        return [Shown(m.as_turn(), m.id, m.version, m.versions, m.meta, m.complete)
                for m in path if m.role in ("user", "assistant")]

    def turns(self, user: str, view: ChatView) -> list[Turn]:
        return [s.turn for s in self.shown(user, view)]

    def selected_index(self, user: str, view: ChatView) -> int | None:
        """The selected message, else the last reply, else the last message."""
        shown = self.shown(user, view)
        if view.selected is not None and 0 <= view.selected < len(shown):
            return view.selected
        for i in range(len(shown) - 1, -1, -1):
            if shown[i].turn.role == "assistant":
                return i
        return len(shown) - 1 if shown else None

    # -- chats --------------------------------------------------------------------------------------
    def greetings(self, character: str, options: PromptOptions) -> list[str]:
        """The character's greeting and its alternates (a card's alternate_greetings), names put in."""
        return greetings(self.app.characters.load(character), options.name1) if character else []

    def new_chat(self, user: str, setup: Setup, incognito: bool = False, model: str | None = None) -> ChatView:
        """A fresh chat, answering with `model` (None: the default model, as it is now). A saved one is
        created at once only when the character greets (the greeting is its first reply, the alternate
        greetings that reply's other versions); otherwise on the first message. An incognito chat keeps
        only the first greeting (it keeps no versions)."""
        texts = self.greetings(setup.character, setup.options)
        model = model or self.app.models.default
        if incognito:
            return ChatView(incognito=True, turns=(Turn.of("assistant", texts[0]),) if texts else (), model=model)
        if texts:
            return self.ensure_saved(user, ChatView(model=model), setup)
        return ChatView(model=model)

    def ensure_saved(self, user: str, view: ChatView, setup: Setup) -> ChatView:
        """The open chat, created (with the character's greetings) if there is none yet."""
        if view.incognito or view.chat_id is not None:
            return view
        model = view.model or self.app.models.default  # the chat keeps the model it started with
        settings = {**(setup.tools.to_settings() if setup.tools.names else {}), **({"model": model} if model else {})}
        chat_id = self.store.create_chat(user, character=setup.character, mode=setup.options.mode,
                                         settings=settings or None)
        if setup.character:
            add_greetings(self.store, user, chat_id, self.app.characters.load(setup.character), setup.options.name1)
        return replace(view, chat_id=chat_id, selected=None, model=model)

    def open(self, user: str, chat_id: int, incognito: bool = False) -> ChatView:
        chat = self.store.chat(user, chat_id)
        return ChatView(chat_id=chat.id, incognito=incognito, model=chat.settings.get("model") or None)

    def newest(self, user: str, character: str) -> ChatView:
        """The character's most recent chat (or an empty view)."""
        chats = self.store.list_chats(user, character=character or "")
        return self.open(user, chats[0].id) if chats else ChatView()

    def set_model(self, user: str, view: ChatView, model: str | None) -> ChatView:
        """The chat answers with `model` from now on (None: the default one); a saved chat remembers it."""
        if view.chat_id is not None and not view.incognito:
            self._remember_model(user, view.chat_id, model)
        return replace(view, model=model or None)

    def _remember_model(self, user: str, chat_id: int, model: str | None) -> None:
        """The model in the chat's settings, beside whatever else is there."""
        settings = dict(self.store.chat(user, chat_id).settings)
        settings["model"] = model or None
        self.store.update_chat(user, chat_id, settings=settings)

    def delete(self, user: str, view: ChatView) -> ChatView:
        if view.chat_id is not None and not view.incognito:
            self.store.delete_chat(user, view.chat_id)
        return ChatView(incognito=view.incognito)

    def rename(self, user: str, view: ChatView, title: str) -> None:
        if view.chat_id is None or view.incognito:
            raise ValueError("open a saved chat first")
        self.store.rename_chat(user, view.chat_id, title)

    def set_mode(self, user: str, view: ChatView, mode: str) -> None:
        """A saved chat remembers the mode it was last used in."""
        if view.chat_id is not None and not view.incognito:
            self.store.update_chat(user, view.chat_id, mode=mode)

    # -- generating -----------------------------------------------------------------------------------
    def send(self, user: str, view: ChatView, message: str, setup: Setup) -> Iterator[Step]:
        """Send a new message and stream the reply. The message is saved as the input hooks made it."""
        if not message.strip():
            raise ValueError("write a message first")
        limits.check_text("message", message)  # before any hook or model reads it (incognito never reaches the store)
        view = self._settle(user, self.ensure_saved(user, view, setup))
        saved = self.tool_plan(user, view)  # the chat keeps the tools it was last used with
        if (saved.names, saved.choice) != (setup.tools.names, setup.tools.choice):
            self._save_plan(user, view, replace(saved, names=setup.tools.names, choice=setup.tools.choice))
        history = self.turns(user, view) + [Turn.of("user", message)]
        preset = resolve_seed(setup.preset)
        request = self._with_tools(self.app.pipeline.begin(request_for(history, setup.options, preset, user=user,
                                                                       template_vars=setup.template_vars,
                                                                       model=view.model)), setup.tools)
        assert request.begun is not None
        said = request.begun.history[-1]
        meta = {"visible": request.begun.visible_input} if request.begun.visible_input != said.text else None
        if view.incognito:
            view = replace(view, turns=(*view.turns, said))
            parent = None
        else:
            parent = self.store.add_message(user, view.chat_id, "user", said, meta=meta)
        yield Step(view, self.turns(user, view), Update())  # saved: the UI clears the input at once
        yield from self._reply(user, view, request, setup, reply_to=parent)

    def regenerate(self, user: str, view: ChatView, setup: Setup, preset: Preset | None = None) -> Iterator[Step]:
        """A new version of the last reply (the old one stays, browsable with the version arrows)."""
        shown = self._last_reply(user, view)
        history = [s.turn for s in shown[:-1]]
        if not history:
            raise ValueError("nothing to regenerate: the reply has no message before it")
        parent = None
        if view.incognito:
            view = replace(view, turns=tuple(history))
        else:
            parent = self.store.message(user, view.chat_id, shown[-1].id).parent_id
        request = request_for(history, setup.options, preset or resolve_seed(setup.preset), user=user,
                              template_vars=setup.template_vars, apply_input_hooks=False, model=view.model)
        yield from self._reply(user, view, self._with_tools(request, setup.tools), setup, reply_to=parent,
                               history=history)

    def reproduce(self, user: str, view: ChatView, setup: Setup) -> Iterator[Step]:
        """Regenerate the last reply with the exact preset and seed it was made with."""
        if view.incognito or view.chat_id is None:
            raise ValueError("only saved replies can be reproduced")
        last = self._last_reply(user, view)[-1]
        yield from self.regenerate(user, view, setup, preset=preset_from_meta(last.meta))

    def continue_reply(self, user: str, view: ChatView, setup: Setup) -> Iterator[Step]:
        """Let the model go on writing the last reply, in place."""
        shown = self._last_reply(user, view)
        options = replace(setup.options, continue_last=True, start_reply_with="")
        request = request_for([s.turn for s in shown], options, resolve_seed(setup.preset), user=user,
                              template_vars=setup.template_vars, apply_input_hooks=False, model=view.model)
        yield from self._reply(user, view, request, replace(setup, options=options), reply_to=None,
                               continuing=shown[-1])

    def impersonate(self, user: str, view: ChatView, setup: Setup) -> Iterator[tuple[str, Update]]:
        """The model writes the user's next message (for the input box; nothing is saved)."""
        options = replace(setup.options, impersonate=True, start_reply_with="")
        request = request_for(self.turns(user, view), options, resolve_seed(setup.preset), user=user,
                              template_vars=setup.template_vars, apply_input_hooks=False, model=view.model)
        for update in self._stream(request, setup.stop):
            yield update.text.strip(), update

    def wants_regenerate(self, user: str, view: ChatView, index: int, step: int) -> bool:
        """`>` on the newest version of the last reply makes a new one (text-generation-webui's rule)."""
        shown = self.shown(user, view)
        if step <= 0 or index != len(shown) - 1 or index < 1:
            return False
        last = shown[index]
        return last.turn.role == "assistant" and last.version == last.versions

    def settled(self, user: str, view: ChatView, timeout: float = 10.0) -> ChatView:
        """The view once its last reply is saved whole: after Stop, the cancelled generator writes the
        reply's end in its own thread; the screen is redrawn from the store only after that."""
        if view.incognito or view.chat_id is None:
            return view
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.shown(user, view)
            if not shown or shown[-1].complete:
                break
            time.sleep(0.02)
        return replace(view, selected=None)

    def after_stop(self, user: str, view: ChatView) -> tuple[ChatView, str]:
        """The view once the stopped reply is saved, and a line saying how far it got."""
        view = self.settled(user, view)
        shown = self.shown(user, view)
        if shown and shown[-1].meta.get("finish_reason") == "cancelled":
            return view, f"Stopped after {shown[-1].meta.get('tokens') or 0} tokens."
        return view, "Stopped."

    def _last_reply(self, user: str, view: ChatView) -> list[Shown]:
        shown = self.shown(user, view)
        if not shown or shown[-1].turn.role != "assistant":
            raise ValueError("the last message is not a reply")
        return shown

    def _stream(self, request: Any, stop: StopSignal | None = None) -> Iterator[Update]:
        from modules.generation import throttle

        try:
            with stop.watching(request.cancel) if stop is not None else nullcontext():
                yield from throttle(self.app.pipeline.stream(request), self.app.settings.stream_fps)
        finally:
            request.cancel.set()  # a closed generator (Stop, a closed page) ends the model within a token

    def _with_tools(self, request: Any, plan: ToolPlan, first_round: bool = True) -> Any:
        """The request with the chat's ticked tools (OpenAI function tools) and its tool_choice."""
        schemas = self.app.tools.schemas(plan.names) if plan.names else []
        if not schemas:
            return request
        return replace(request, tools=tuple(schemas), tool_choice=plan.request_choice(first_round))

    def _reply(self, user: str, view: ChatView, request: Any, setup: Setup, reply_to: int | None,
               continuing: Shown | None = None, history: list[Turn] | None = None,
               decision: str | None = None) -> Iterator[Step]:
        """Stream a reply; in a saved chat it is saved as it streams, under `reply_to` (a new message)
        or into the message it continues. `history`: what the reply answers, when it is not the whole
        open chat (a regenerated reply's old version is not shown beside the new one).

        The tool loop: when a generation ends in tool calls, each runs (or waits for the user's approval:
        then the reply stops there, and `answer_calls` resumes it), its result joins the turn, and the
        model goes on from the turn so far, until it answers in words or the per-reply limit is reached
        (then the model must answer without tools). `request` None: resume `continuing` at its pending calls."""
        base = list(history) if history is not None else self.turns(user, view)
        if view.incognito:  # an incognito chat's turns never pass through the store's check
            for past in base:
                limits.check_text("message", past.text)
        if continuing is not None:
            base = base[:-1]
        saved = self.tool_plan(user, view)  # what this chat said "always" to
        setup = replace(setup, tools=replace(setup.tools, always=tuple(dict.fromkeys((*setup.tools.always,
                                                                                     *saved.always)))))
        prefix = continuing.turn if continuing is not None else (
            Turn.of("assistant", setup.options.start_reply_with) if setup.options.start_reply_with else None)
        writer = None
        if not view.incognito:
            message_id = continuing.id if continuing is not None else self.store.add_message(
                user, view.chat_id, "assistant", "", parent_id=reply_to, complete=False)
            writer = ReplyWriter(self.store, user, view.chat_id, message_id)
            if request is not None:
                self.store.update_message(user, view.chat_id, message_id,
                                          meta=reply_meta(setup.options, request.preset))
        view = replace(view, selected=None)
        turn, last, closed = prefix or Turn.of("assistant", ""), None, False
        limit = self.app.settings.tool_calls_per_turn
        waiting = answered_in_words = False
        resumed = request is None
        try:
            yield Step(view, base + [turn], Update())  # the reply has begun: the UI shows it is waiting
            while True:
                if request is not None:
                    for update in self._stream(request, setup.stop):
                        last = update
                        if not update.queue_position:
                            turn = reply_turn(update, prefix)
                            if writer:
                                writer.update(turn.parts, update.tokens)
                        if view.incognito:
                            view = replace(view, turns=(*base, turn))
                        yield Step(view, base + [turn], update)
                pending = tool_loop.pending_calls(turn)
                if not pending or (last is not None and last.finish_reason == "cancelled"):
                    break
                for call in pending:
                    tool = self.app.tools.get(call.name)
                    if tool_loop.results_count(turn) >= limit:
                        result = tool_loop.refused(f"the limit of {limit} tool calls for one reply was reached")
                    elif decision is None and tool_loop.needs_approval(tool, setup.tools):
                        waiting = True  # the user approves or rejects it: answer_calls resumes here
                        break
                    elif decision == "reject":
                        result = tool_loop.refused("the user declined this call")
                    else:
                        if decision == "always":
                            setup = replace(setup, tools=self._always(user, view, setup.tools, call.name))
                        yield Step(view, base + [turn], last or Update())  # the call shows as running
                        result = self.app.tools.call(call.name, call.arguments)
                    decision = None  # a decision answers one call
                    turn = tool_loop.with_result(turn, call, result)
                    if writer:
                        writer.flush(turn.parts, 0)
                    if view.incognito:
                        view = replace(view, turns=(*base, turn))
                    yield Step(view, base + [turn], last or Update())
                if waiting or answered_in_words:
                    break
                # the model reads the results and goes on; past the limit it must answer in words (once)
                answered_in_words = tool_loop.results_count(turn) >= limit
                plan = replace(setup.tools, choice="none") if answered_in_words else setup.tools
                options = replace(setup.options, continue_last=False, start_reply_with="")
                request = self._with_tools(request_for(base + [turn], options, resolve_seed(setup.preset), user=user,
                                                       template_vars=setup.template_vars, apply_input_hooks=False,
                                                       model=view.model),
                                           plan, first_round=False)
                prefix = turn
        except GeneratorExit:  # Stop (or a closed page) before the model finished
            closed = True
            raise
        finally:
            if writer:
                meta = final_meta(last) if last else (
                    {} if resumed else {"finish_reason": "cancelled" if closed else "error"})
                if last and meta.get("finish_reason") is None:
                    meta["finish_reason"] = "cancelled"
                if waiting:
                    meta["finish_reason"] = "tool_calls"
                meta["awaiting_approval"] = waiting
                if turn.extras.get("shown"):  # shown only while the message still holds these words (an edit drops it)
                    meta.update(shown=turn.extras["shown"], shown_for=turn.text)
                writer.flush(turn.parts, last.tokens if last else 0, meta=meta, complete=True)

    # -- tools --------------------------------------------------------------------------------------
    def tool_plan(self, user: str, view: ChatView) -> ToolPlan:
        """The tools saved with a chat (none for an incognito or unsaved one)."""
        if view.incognito or view.chat_id is None:
            return ToolPlan()
        return ToolPlan.from_settings(self.store.chat(user, view.chat_id).settings)

    def set_tools(self, user: str, view: ChatView, names: list[str] | tuple[str, ...],
                  choice: str = "auto") -> ToolPlan:
        """Tick the chat's tools (saved with a saved chat). Only tools the operator made available can be
        ticked; the "always" answers stay."""
        available = set(self.app.tools.names())
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ValueError(f"no such tool: {', '.join(unknown)}")
        if choice not in tool_loop.TOOL_CHOICES and choice not in names:
            raise ValueError(f"tool_choice must be one of {', '.join(tool_loop.TOOL_CHOICES)} or a ticked tool")
        plan = replace(self.tool_plan(user, view), names=tuple(names), choice=choice)
        self._save_plan(user, view, plan)
        return plan

    def _save_plan(self, user: str, view: ChatView, plan: ToolPlan) -> None:
        if not view.incognito and view.chat_id is not None:
            settings = self.store.chat(user, view.chat_id).settings
            self.store.update_chat(user, view.chat_id, settings={**settings, **plan.to_settings()})

    def _always(self, user: str, view: ChatView, plan: ToolPlan, name: str) -> ToolPlan:
        """The user said "always" for `name`: this chat runs it from now on without asking."""
        plan = replace(plan, always=tuple(dict.fromkeys((*plan.always, name))))
        saved = self.tool_plan(user, view)
        self._save_plan(user, view, replace(saved, always=tuple(dict.fromkeys((*saved.always, name)))))
        return plan

    def awaiting(self, user: str, view: ChatView) -> list[ToolCallPart]:
        """The calls of the last reply that wait for the user's approval (empty: none)."""
        shown = self.shown(user, view)
        if not shown or shown[-1].turn.role != "assistant":
            return []
        return tool_loop.pending_calls(shown[-1].turn)

    def answer_calls(self, user: str, view: ChatView, setup: Setup, decision: str) -> Iterator[Step]:
        """Approve (once or "always") or reject the first call waiting in the last reply, then go on
        with the reply (other calls may ask again)."""
        if decision not in tool_loop.DECISIONS:
            raise ValueError(f"answer with one of {', '.join(tool_loop.DECISIONS)}")
        if not self.awaiting(user, view):
            raise ValueError("no tool call is waiting for an answer")
        shown = self._last_reply(user, view)
        yield from self._reply(user, view, None, setup, reply_to=None, continuing=shown[-1], decision=decision)

    def _settle(self, user: str, view: ChatView) -> ChatView:
        """Calls still waiting when the user writes again are answered "not run" (a model's history must
        pair each call with a result)."""
        pending = self.awaiting(user, view)
        if not pending:
            return view
        last = self.shown(user, view)[-1]
        turn = last.turn
        for call in pending:
            turn = tool_loop.with_result(turn, call, tool_loop.refused("the user moved on without answering"))
        if view.incognito:
            return replace(view, turns=(*view.turns[:-1], turn))
        self.store.update_message(user, view.chat_id, last.id, parts=turn.parts, meta={"awaiting_approval": False})
        return view

    # -- editing ------------------------------------------------------------------------------------
    def add_dummy(self, user: str, view: ChatView, role: str, text: str, setup: Setup) -> ChatView:
        """A message written by hand (as the user or as the reply), with no generation."""
        if not text.strip():
            raise ValueError("write the dummy message in the input box first")
        view = self.ensure_saved(user, view, setup)
        if view.incognito:
            return replace(view, turns=(*view.turns, Turn.of(role, text)), selected=None)
        self.store.add_message(user, view.chat_id, role, text)
        return replace(view, selected=None)

    def remove_last(self, user: str, view: ChatView) -> tuple[ChatView, str]:
        """Remove the last user message and everything after it; its text comes back (for the input box)."""
        shown = self.shown(user, view)
        users = [i for i, s in enumerate(shown) if s.turn.role == "user"]
        if not users:
            raise ValueError("nothing to remove")
        i = users[-1]
        if view.incognito:
            view = replace(view, turns=tuple(s.turn for s in shown[:i]))
        else:
            self.store.delete_message(user, view.chat_id, shown[i].id)
        return replace(view, selected=None), shown[i].turn.text

    def _at(self, user: str, view: ChatView, index: int | None) -> tuple[list[Shown], int]:
        shown = self.shown(user, view)
        index = self.selected_index(user, replace(view, selected=index)) if index is not None else \
            self.selected_index(user, view)
        if index is None:
            raise ValueError("no message selected")
        return shown, index

    def edit(self, user: str, view: ChatView, index: int | None, text: str) -> ChatView:
        """Replace a message's words (its reasoning and tool parts stay)."""
        shown, index = self._at(user, view, index)
        if view.incognito:
            turns = [s.turn for s in shown]
            turns[index] = turns[index].with_text(text)
            return replace(view, turns=tuple(turns), selected=index)
        self.store.update_message(user, view.chat_id, shown[index].id, content=text)
        return replace(view, selected=index)

    def select_version(self, user: str, view: ChatView, index: int | None, step: int) -> ChatView:
        """Show the previous (-1) or next (+1) version of a message."""
        shown, index = self._at(user, view, index)
        if shown[index].id is None:
            raise ValueError("incognito chats keep no versions")
        self.store.select_version(user, view.chat_id, shown[index].id, step)
        return replace(view, selected=index)

    def branch(self, user: str, view: ChatView, index: int | None = None) -> ChatView:
        """A new chat holding the conversation up to message `index` (default: the whole chat)."""
        shown = self.shown(user, view)
        if not shown:
            raise ValueError("nothing to branch")
        index = len(shown) - 1 if index is None else index
        if not 0 <= index < len(shown):
            raise ChatNotFound(f"message {index + 1} not found")
        if shown[index].id is None:
            raise ValueError("incognito chats cannot be branched")
        return self.open(user, self.store.branch(user, view.chat_id, shown[index].id))  # same model too

    def select(self, view: ChatView, index: int) -> ChatView:
        return replace(view, selected=index)

    def version_line(self, user: str, view: ChatView) -> tuple[int | None, str]:
        """(selected index, a line about it: which message, which version, model, seed, tokens)."""
        shown = self.shown(user, view)
        index = self.selected_index(user, view)
        if index is None:
            return None, "No message selected."
        item = shown[index]
        line = f"Message {index + 1} ({item.turn.role})"
        if item.id is not None:
            line += f" · version {item.version}/{item.versions}"
            if item.meta.get("model"):
                line += f" · {item.meta['model']}, seed {item.meta.get('seed')}, {item.meta.get('tokens')} tokens"
        return index, line

