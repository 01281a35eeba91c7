"""The one generation pipeline: every reply (chat, notebook, API) goes through `Pipeline.stream`.

    request -> its model's queue (FIFO, bounded; the model loads first if needed)
            -> extensions' prompt hooks + prompt (chat template, sandboxed)
            -> backend.stream (or an extension's custom_generate_reply)
            -> stop strings (partial matches held back) -> updates with counts and timings
            -> extensions' output_modifier and reply_footer on the final update

Each request carries its own cancel Event; nothing here is global. The backend's worker never
waits for the reader: it queues tokens and the reader takes them at its own pace.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import itertools
import logging
import threading
import time
from dataclasses import InitVar, dataclass, field, replace
from typing import Any, Callable, Generator, Iterator, Protocol

from pydantic import ValidationError

from modules import reasoning
from modules.chat import ChatPrompt, PromptOptions, build_chat_prompt, engine_messages, options_state, tool_template
from modules.constraints import constraint_of, stop_strings
from modules.extensions import Extensions, history_to_messages, messages_to_history
from modules.loaders import registry
from modules.loaders.base import Backend, Delta, GenerationHooks
from modules.presets import Preset
from modules.tools import forced
from modules.tools import prompt as tool_prompt
from modules.tools.formats import GENERIC, CallFormat
from modules.tools.spec import ToolUse, tool_use
from modules.tools.stream import CallStream, EngineCalls
from modules.turns import Part, TextPart, ToolCallPart, Turn, turns_from_messages

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """More requests are waiting than the server accepts."""


class ModelBusy(QueueFull):
    """A long job (training) holds the model and was started with "refuse requests": try again in
    `retry_after` seconds (the API's 503 with Retry-After)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoModel(RuntimeError):
    """No model is loaded."""


class GenerationError(RuntimeError):
    """The backend failed mid-generation (out of memory, a kernel error, a remote engine's error).
    The request ends with this message; the model, the queue and the other requests are unaffected."""


def _describe_failure(exc: BaseException) -> str:
    name = type(exc).__name__
    if "OutOfMemory" in name or isinstance(exc, MemoryError):
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # give the failed request's activations back
        except ImportError:
            pass
        return "out of memory while generating: try a shorter prompt, fewer max_new_tokens or a smaller model"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"generation failed: {name}: {first}"


class FairQueue:
    """First come, first served access to the model, with a bounded number of waiters.

    `acquire(cancel)` is a generator that yields the waiting position while it waits, so callers can
    show it, and returns once the caller holds a slot (`release()` gives it back). A request whose
    cancel Event is set while waiting leaves the queue.
    """

    def __init__(self, max_waiting: int, slots: int | Callable[[], int] = 1) -> None:
        self.max_waiting = max_waiting
        self.slots = slots  # a number, or a function giving it now (the loaded backend's concurrency)
        self._cond = threading.Condition()
        self._waiting: collections.deque[object] = collections.deque()
        self._running = 0

    def acquire(self, cancel: threading.Event, weight: int = 1, limit: bool = True) -> Iterator[int]:
        """Wait for `weight` slots, yielding the 1-based position whenever it changes; returns once running."""
        ticket = object()
        with self._cond:
            if limit and len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting; try again shortly")
            self._waiting.append(ticket)
        last = None
        try:
            while True:
                with self._cond:
                    if self._waiting[0] is ticket and self._running + weight <= self._slots():
                        self._waiting.popleft()
                        self._running += weight
                        self._cond.notify_all()
                        return
                    pos = self._waiting.index(ticket) + 1
                    if not cancel.is_set():
                        self._cond.wait(timeout=0.25)  # wakes on notify; the timeout re-checks cancel
                if cancel.is_set():
                    raise _Cancelled()
                if pos != last:
                    last = pos
                    yield pos
        except BaseException:
            with self._cond:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                    self._cond.notify_all()
            raise

    def _slots(self) -> int:
        return self.slots() if callable(self.slots) else self.slots

    def release(self, weight: int = 1) -> None:
        with self._cond:
            self._running -= weight
            self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold every slot (in FIFO turn, never refused): for swapping the model or its adapters
        while no generation is using it."""
        weight = self._slots()
        for _ in self.acquire(threading.Event(), weight=weight, limit=False):
            pass
        try:
            yield
        finally:
            self.release(weight)

    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def wake(self) -> None:
        """Make every waiter look again now: the slot count (a function) or what its cancel watches changed."""
        with self._cond:
            self._cond.notify_all()


class _Cancelled(Exception):
    pass


class StopStringFilter:
    """Cut the text at the first stop string, holding back any tail that could start one."""

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._firsts = frozenset(s[0] for s in self.stops)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Return the text that is safe to show now."""
        if self.stopped:
            return ""
        buf = self._held + text
        if not any(c in buf for c in self._firsts):
            # no stop string can start anywhere in it (most tokens): nothing to cut, nothing to hold
            self._held = ""
            return buf
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return buf[:cut]
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), keep, -1):
                if buf.endswith(stop[:n]):
                    keep = n
                    break
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """At the end of generation the held tail was not a stop string after all."""
        held, self._held = self._held, ""
        return "" if self.stopped else held


class PipelineStats:
    """Counters the server exposes (and tests read instead of sleeping): what is running right now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.requests = 0
        self.tokens = 0

    def started(self) -> None:
        with self._lock:
            self.active += 1
            self.requests += 1

    def add_tokens(self, n: int) -> None:
        with self._lock:  # several requests generate at once when the backend batches
            self.tokens += n

    def finished(self) -> None:
        with self._lock:
            self.active -= 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"active": self.active, "requests": self.requests, "tokens": self.tokens}


@dataclass
class GenerationRequest:
    """One generation: raw `prompt` text (notebook, /v1/completions), or a chat turn: `history` (Turns,
    oldest first) and the `options` that shape its prompt (modules/chat.py builds it for whichever
    model holds the queue slot, at the moment it does).

    `messages` ({"role", "content"} dicts, as OpenAI clients send them) is a shorthand for a history
    in instruct mode with the model's own template; `continue_last` for options that continue the last
    (assistant) message. Both become `history`/`options` when the request is made."""

    preset: Preset
    prompt: str | None = None
    history: list[Turn] | None = None
    options: PromptOptions | None = None
    messages: InitVar[list[dict[str, Any]] | None] = None
    continue_last: InitVar[bool] = False
    #: variables for the chat template besides the messages (enable_thinking, reasoning_effort, ...)
    template_vars: dict[str, Any] = field(default_factory=dict)
    #: the model to answer with (a name or alias; None: the default model); loaded just in time if needed
    model: str | None = None
    stop: tuple[str, ...] = ()
    cancel: threading.Event = field(default_factory=threading.Event)
    user: str = "local"
    #: extra values for extensions' `state` (chat mode, names, ...), over the preset's values
    state: dict[str, Any] = field(default_factory=dict)
    #: False when the new user message must reach the model exactly as given (no input hooks)
    apply_input_hooks: bool = True
    #: set by Pipeline.begin: the turn's state and input hooks ran; prepare() reuses them
    begun: "TurnStart | None" = None
    #: who may share prompt caches with this request (modules/prefix_cache.py); default: its user.
    #: The API sets one scope for all its callers (they hold one key; `user` is only their own claim).
    cache_scope: str | None = None
    #: OpenAI's token prompts: generate after exactly these ids; `prompt` is then their text (what
    #: extensions and text-only backends get)
    prompt_ids: list[int] | None = None
    #: OpenAI function tools the model may call (modules/tools/spec.py checks them), which it may call
    #: ("auto", "none", "required" or {"type": "function", "function": {"name": ...}}), and whether several
    #: at once. The reply's calls come back in the final Update's `tool_calls`; nothing here runs a tool.
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: Any = None
    parallel_tool_calls: bool = True

    def __post_init__(self, messages: list[dict[str, Any]] | None, continue_last: bool) -> None:
        if messages is not None:
            self.history = turns_from_messages(messages)
        if self.history is not None and self.options is None:
            self.options = PromptOptions(mode="instruct", continue_last=continue_last)
        elif continue_last and self.options is not None and not self.options.continue_last:
            self.options = replace(self.options, continue_last=True)

    @property
    def is_chat(self) -> bool:
        return self.prompt is None


@dataclass(frozen=True)
class TurnStart:
    """What Pipeline.begin settled for a turn: the extensions' state, the preset they left, the history
    with the new user message as the input hooks made it, and that message's visible form."""

    state: dict[str, Any]
    preset: Preset
    history: list[Turn]
    user_input: str = ""
    visible_input: str = ""


@dataclass
class Update:
    """What a reader sees: the reply so far plus progress and, at the end, a finish reason.

    `text` is the answer (what the user reads); a reasoning model's thinking is in `reasoning` and,
    in order with the answer, in `parts` (modules/turns.py). Raw-text requests (notebook, completions)
    have no reasoning: their `text` is everything the model wrote."""

    text: str = ""
    delta: str = ""
    tokens: int = 0
    prompt_tokens: int = 0
    queue_position: int = 0
    #: while waiting: the model being loaded for this request ("" when it is loaded)
    loading: str = ""
    finish_reason: str | None = None
    first_token_seconds: float | None = None
    seconds: float = 0.0
    model: str = ""
    #: final update only: the model's own text before extensions' output_modifier (keep this in history)
    raw_text: str | None = None
    #: final update only: sanitized HTML lines from extensions' reply_footer, shown under the reply
    footer: str = ""
    #: the model's context, and how many oldest messages were dropped to fit it (0 when not truncated)
    context_length: int = 0
    turns_dropped: int = 0
    #: the reasoning so far, and what this update added to it
    reasoning: str = ""
    reasoning_delta: str = ""
    #: the model is inside a reasoning block right now (the UI keeps the block open)
    thinking: bool = False
    #: the reply as typed parts, in order (reasoning blocks with their token counts and seconds, text,
    #: tool calls)
    parts: tuple[Part, ...] = ()
    #: final update only: the end-of-sequence token the reply ended on (None: a stop string, the length
    #: limit, ...); it is counted in `tokens` but is in no text
    eos_token: int | None = None
    #: the tool calls the reply makes (a request with `tools`): while streaming, those seen so far with
    #: their arguments as written so far; on the final update, the calls as read from the whole answer
    #: (then `finish_reason` is "tool_calls"). `text` is the answer without them.
    tool_calls: tuple[ToolCallPart, ...] = ()

    def copy(self, **changes: Any) -> "Update":
        """A copy with `changes`: what readers get, once per token (dataclasses.replace costs ~10x more)."""
        new = object.__new__(Update)
        new.__dict__.update(self.__dict__, **changes)
        return new


@dataclass(frozen=True)
class ChatHooks:
    """The extensions' chat-prompt hooks, handed to build_chat_prompt (None where no extension has one)."""

    history: Callable[[list[Turn]], list[Turn]] | None = None
    bot_prefix: Callable[[str], str] | None = None


@dataclass
class Prepared:
    """A request after the extensions' prompt-side hooks: what goes to the model."""

    prompt: str
    preset: Preset
    state: dict[str, Any]
    user_input: str
    is_chat: bool
    #: set for backends that template chats themselves (remote engines): the messages to send; `prompt`
    #: is then only their text, for counting
    messages: list[dict[str, Any]] | None = None
    #: stop strings the prompt builder derived (template end-of-turn, "\nUser:")
    stops: tuple[str, ...] = ()
    context_length: int = 0
    turns_dropped: int = 0
    #: where the prompt leaves the reply: "inside" a reasoning block it opened, "after" one it closed, or ""
    reasoning_state: str = ""
    #: the request's tools (active: the model sees them and the answer is read for calls) and the format
    #: the answer's calls are read in (modules/tools/formats.py)
    tools: ToolUse = field(default_factory=ToolUse)
    call_format: CallFormat = GENERIC
    #: the preset's constraint leaves text free until a tool call starts (the derived stop strings apply)
    free_text: bool = False
    #: the preset's constraint is a tool-call grammar that holds the (bounded) thought itself
    #: (modules/tools/forced.py); any other constraint starts where the thought the prompt opened ends
    constraint_covers_thought: bool = False


class ModelSource(Protocol):
    """What the pipeline needs from the model manager (modules/models.py)."""

    def acquire(self, name: str | None, cancel: threading.Event) -> Generator[Any, None, Any]:
        """Wait for a slot on the model `name` (None: the default one), loading it if needed; yields waits
        (`.position`, `.loading`) and returns a lease (`.backend`, `.release()`)."""
        ...


def _history_hook(ext: Extensions) -> Callable[[list[Turn]], list[Turn]] | None:
    """history_modifier on text-generation-webui's shape ({"internal": [[user, bot], ...]}). A turn it
    gives back unchanged keeps its parts (reasoning, tool calls) and the tool turns after it; a changed one
    becomes plain text."""
    if not ext.has("history_modifier"):
        return None

    def apply(history: list[Turn]) -> list[Turn]:
        turns: list[Turn] = []
        results: dict[int, list[Turn]] = {}  # tool turns (no place in that shape), by the turn they follow
        for turn in history:
            if turn.role == "tool" and turns:
                results.setdefault(id(turns[-1]), []).append(turn)
            elif turn.role != "tool":
                turns.append(turn)
        # a reply that is only calls shows them as text there (it would vanish as an empty reply)
        plain = [{"role": t.role, "content": t.text or tool_prompt.calls_text(t)} for t in turns]
        changed = history_to_messages(ext.history(messages_to_history(plain)), [])
        out = []
        for i, message in enumerate(changed):
            same = i < len(turns) and plain[i]["role"] == message["role"] and plain[i]["content"] == message["content"]
            out.append(turns[i] if same else Turn.of(message["role"], message["content"]))
            out += results.get(id(out[-1]), [])  # an unchanged reply keeps the results of its calls
        return [t for t in out if t.role in ("user", "assistant", "tool")]

    return apply


class Pipeline:
    """Turns requests into streamed updates through the backend of the model each one names."""

    def __init__(self, models: ModelSource, extensions: Extensions | None = None) -> None:
        self.models = models
        self.stats = PipelineStats()
        self.extensions = extensions if extensions is not None else Extensions(entry_points=False)

    # -- the prompt side ----------------------------------------------------------------------------
    def begin(self, request: GenerationRequest) -> GenerationRequest:
        """Run what belongs to the turn rather than to the model, once: state_modifier on the full state,
        then (for a new chat message) chat_input_modifier and input_modifier. The request that comes back
        carries the result; prepare() reuses it, so a caller that must store the user's message as the
        hooks made it (the Chat tab) calls this first and no hook runs twice."""
        if request.begun is not None:
            return request
        ext = self.extensions
        base = {**request.preset.model_dump(), "mode": "notebook", "user": request.user,
                "custom_stopping_strings": list(request.stop) + list(request.preset.custom_stopping_strings)}
        if request.is_chat:
            base.update(options_state(request.options or PromptOptions(), request.history or []))
        state = ext.state({**base, **request.state})
        preset = _preset_from_state(request.preset, state)
        history = list(request.history or [])
        options = request.options or PromptOptions()
        user_input = visible = ""
        if not request.is_chat:
            prompt = ext.input(request.prompt, state, is_chat=False) if request.apply_input_hooks else request.prompt
            return replace(request, prompt=prompt, begun=TurnStart(state, preset, history, prompt, prompt))
        new_turn = bool(history) and history[-1].role == "user" and not options.continue_last \
            and not options.impersonate
        if new_turn:
            user_input = visible = history[-1].text
            if request.apply_input_hooks:
                user_input, visible = ext.chat_input(user_input, user_input, state)
                user_input = ext.input(user_input, state, is_chat=True)
                history[-1] = history[-1].with_text(user_input)
        return replace(request, begun=TurnStart(state, preset, history, user_input, visible))

    def build_prompt(self, backend: Backend, request: GenerationRequest) -> str:
        """The prompt text `request` gives this backend, without running any extension hook (previews,
        checks). A request that was begun uses the history as the input hooks left it."""
        if not request.is_chat:
            return request.prompt
        return self.chat_prompt(backend, request).text

    def chat_prompt(self, backend: Backend, request: GenerationRequest) -> ChatPrompt:
        """The chat prompt as built for `backend` (with what truncation dropped), no hooks run."""
        if backend.chat_template is None:
            raise ValueError(f"{backend.name} has no chat template")
        history = request.begun.history if request.begun else list(request.history or [])
        return self._build(backend, request, history, None)

    def _build(self, backend: Backend, request: GenerationRequest, history: list[Turn],
               hooks: ChatHooks | None) -> ChatPrompt:
        extra = {**backend.template_vars(), **request.template_vars}
        use = request_tools(request)
        if use.active:
            extra["tools"] = use.offered()
        return build_chat_prompt(history, request.options or PromptOptions(), backend,
                                 request.preset.max_new_tokens, extra, hooks)

    def prepare(self, backend: Backend, request: GenerationRequest) -> Prepared:
        """Run the prompt-side extension hooks and build the prompt (text-generation-webui's order):
        state_modifier, chat_input_modifier, input_modifier (in `begin`, once per turn), then
        history_modifier, custom_generate_chat_prompt or the prompt, bot_prefix_modifier."""
        start = self.begin(request).begun
        assert start is not None
        if not request.is_chat:
            return Prepared(start.user_input, start.preset, start.state, start.user_input, False)
        ext = self.extensions
        options = request.options or PromptOptions()
        state, history = start.state, start.history
        history_hook = _history_hook(ext)
        if history_hook is not None:  # system turns are not history: they stay as they are, in front
            system = [t for t in history if t.role == "system"]
            history = system + history_hook([t for t in history if t.role != "system"])
        hooks = ChatHooks(bot_prefix=(lambda prefix: ext.bot_prefix(prefix, state))
                          if ext.has("bot_prefix_modifier") else None)
        if ext.has("custom_generate_chat_prompt"):
            prompt = self._custom_prompt(backend, request, start, history, hooks)
            if prompt is not None:
                return self._with_tools(backend, request, Prepared(prompt, start.preset, state, start.user_input, True))
        if registry.capabilities(backend).engine_templates:
            # The engine applies the model's own template itself whenever messages say what the turn means.
            messages = engine_messages(history, options)
            if messages is not None:
                text = "\n".join(str(m.get("content") or "") for m in messages)
                return self._with_tools(backend, request, Prepared(text, start.preset, state, start.user_input, True,
                                                                   messages=messages))
        built = self._build(backend, request, history, hooks)
        prepared = Prepared(built.text, start.preset, state, start.user_input, True, stops=tuple(built.stops),
                            context_length=built.context_length, turns_dropped=built.turns_dropped,
                            reasoning_state=reasoning.prompt_state(backend.reasoning_format, built.text))
        return self._with_tools(backend, request, prepared)

    def _with_tools(self, backend: Backend, request: GenerationRequest, prepared: Prepared) -> Prepared:
        """A request with tools: the format its calls are read in, and for a forced call the constraint
        that makes the reply one (modules/tools/forced.py)."""
        use = request_tools(request)
        mode = registry.capabilities(backend).tools
        if not use.active or mode == "none":
            return prepared
        prepared.tools = use
        if prepared.messages is not None:  # the engine templates the tools and reads the calls itself
            return prepared
        prepared.call_format = forced.call_format(tool_template(backend, request.options or PromptOptions()))
        if use.choice.forced:
            keys = forced.constraint(backend, use, prepared.call_format, prepared.reasoning_state,
                                     backend.reasoning_format, prepared.preset.max_new_tokens)
            prepared.preset, prepared.constraint_covers_thought = prepared.preset.model_copy(update=keys), True
        elif constraint_of(prepared.preset) is None:  # auto: a call, once started, is constrained (the
            lazy = forced.lazy_constraint(backend, use, prepared.call_format,  # request's own constraint wins)
                                          prepared.reasoning_state, backend.reasoning_format)
            if lazy is not None:
                prepared.preset, prepared.free_text = prepared.preset.model_copy(update=lazy), True
                prepared.constraint_covers_thought = True
        return prepared

    def _custom_prompt(self, backend: Backend, request: GenerationRequest, start: "TurnStart",
                       history: list[Turn], hooks: ChatHooks) -> str | None:
        """An extension's custom_generate_chat_prompt, given text-generation-webui's arguments and Parlour's own
        prompt builder (`_parlour_default`, what its `chat.generate_chat_prompt` calls). None: build as usual."""
        options = request.options or PromptOptions()
        system = [t for t in history if t.role == "system"]
        chat_turns = [t for t in history if t.role != "system"]
        new_turn = bool(start.user_input) and bool(chat_turns) and chat_turns[-1].role == "user"
        past = messages_to_history([{"role": t.role, "content": t.text}
                                    for t in (chat_turns[:-1] if new_turn else chat_turns)])

        def rebuild(text: str, hist: dict[str, Any]) -> str:
            turns = [Turn.of(m["role"], m["content"]) for m in history_to_messages(hist, [])]
            if new_turn:
                turns.append(Turn.of("user", text))
            if backend.chat_template is None:  # a remote engine templates the messages itself: text for counting
                return "\n".join(t.text for t in system + turns)
            return self._build(backend, request, system + turns, hooks).text

        default = _DefaultPrompt(rebuild, start.user_input, past)
        prompt = self.extensions.chat_prompt(start.user_input, {**start.state, "history": past}, history=past,
                                             _continue=options.continue_last, impersonate=options.impersonate,
                                             _parlour_default=default)
        return prompt if prompt is not None and not default.is_default(prompt) else None

    def _finish(self, update: Update, prepared: Prepared) -> Update:
        """The output-side hooks: output_modifier on the finished answer, then reply_footer."""
        update.raw_text = update.text  # the parts keep the model's own words (the next prompt reads them)
        update.text = self.extensions.output(update.text, prepared.state, is_chat=prepared.is_chat)
        stats = {"tokens": update.tokens, "seconds": update.seconds, "first_token_seconds": update.first_token_seconds,
                 "prompt_tokens": update.prompt_tokens, "finish_reason": update.finish_reason, "model": update.model}
        update.footer = self.extensions.reply_footer(stats, prepared.state)
        return update

    def _source(self, backend: Backend, prepared: Prepared, request: GenerationRequest,
                stops: "StopStringFilter") -> Iterator[Delta]:
        """Where the tokens come from: an extension's custom_generate_reply, or the backend."""
        ext = self.extensions
        if ext.has("custom_generate_reply"):
            texts = ext.generate_reply(prepared.prompt, prepared.user_input, prepared.preset.seed, prepared.state,
                                       list(stops.stops), is_chat=prepared.is_chat)
            first = next(texts, None) if texts is not None else None
            if first is not None:  # nothing at all (it failed at once, or was empty): the model answers
                return _deltas_from_texts(itertools.chain([first], texts), backend, request.cancel)
        hooks = GenerationHooks(
            tokenizer=(lambda p, ids, emb: ext.tokenizer(prepared.state, p, ids, emb))
            if ext.has("tokenizer_modifier") else None,
            logits_processors=ext.logits_processors if ext.has("logits_processor_modifier") else None)
        if request.prompt_ids is not None:
            hooks.tokenizer = _exact_ids(request.prompt_ids, hooks.tokenizer)
        if prepared.messages is not None:
            engine_tools = {"tools": list(request.tools), "tool_choice": request.tool_choice or "auto",
                            "parallel_tool_calls": request.parallel_tool_calls} if prepared.tools.active else None
            if engine_tools and "tools" in _parameters(getattr(backend.stream_chat, "__func__", backend.stream_chat)):
                return backend.stream_chat(prepared.messages, prepared.preset, request.cancel, tools=engine_tools)
            return backend.stream_chat(prepared.messages, prepared.preset, request.cancel)
        accepts = _parameters(getattr(backend.stream, "__func__", backend.stream))
        extra: dict[str, Any] = {}
        if (hooks.tokenizer or hooks.logits_processors) and "hooks" in accepts:
            extra["hooks"] = hooks
        if "cache_scope" in accepts:
            extra["cache_scope"] = request.cache_scope or f"user:{request.user}"
        if "constraint_after_thought" in accepts:  # the thought the prompt opened is free (constraint_stage.py)
            extra["constraint_after_thought"] = (prepared.reasoning_state == "inside"
                                                 and not prepared.constraint_covers_thought)
        return backend.stream(prepared.prompt, prepared.preset, request.cancel, **extra)

    def stream(self, request: GenerationRequest) -> Iterator[Update]:
        start = time.perf_counter()
        update = Update()
        try:
            lease = yield from self._wait_for_model(request, update)
        except _Cancelled:
            update.finish_reason = "cancelled"
            yield update.copy()
            return
        try:
            update.queue_position, update.loading = 0, ""
            backend = lease.backend
            update.model = backend.name
            prepared = self.prepare(backend, request)
            # prepared.preset.custom_stopping_strings already holds request.stop (see prepare's state); a
            # constrained reply is cut only at those (constraints.stop_strings)
            stops = StopStringFilter(stop_strings(prepared.preset, prepared.stops + tuple(backend.stop_strings),
                                                  prepared.free_text))
            counted = (len(request.prompt_ids) if request.prompt_ids is not None
                       else self.extensions.tokenized_length(prepared.prompt))
            update.prompt_tokens = counted if counted is not None else len(backend.tokenize(prepared.prompt))
            update.context_length = prepared.context_length or backend.context_length
            update.turns_dropped = prepared.turns_dropped

            self.stats.started()
            try:
                final = yield from self._run(backend, prepared, request, stops, update, start)
            finally:
                self.stats.finished()
        finally:
            lease.release()
        # after the model and the queue are free, so the next request can start at once
        yield self._finish(final, prepared)

    def _wait_for_model(self, request: GenerationRequest, update: Update) -> Generator[Update, None, Any]:
        """Wait in the requested model's queue (it loads first if it is not loaded), showing the position;
        returns the lease on it."""
        waits = self.models.acquire(request.model, request.cancel)
        try:
            while True:
                try:
                    wait = next(waits)
                except StopIteration as done:
                    return done.value
                update.queue_position, update.loading = wait.position, wait.loading or ""
                yield update.copy()
        finally:
            waits.close()  # a reader that left while waiting leaves the queue too

    def _run(self, backend: Backend, prepared: Prepared, request: GenerationRequest, stops: "StopStringFilter",
             update: Update, start: float) -> Generator[Update, None, Update]:
        """Yield updates while tokens arrive; return the final one (with its finish reason). A chat
        reply's reasoning blocks are split from its answer here, after stop strings."""
        stream = self._source(backend, prepared, request, stops)
        # a constrained reply's answer is the grammar's text whole: no thought opens inside it
        reply = reasoning.ReplyAssembler(backend.reasoning_format, prepared.reasoning_state, split=prepared.is_chat,
                                         one_block=constraint_of(prepared.preset) is not None)
        calls: CallStream | EngineCalls | None = None
        if prepared.tools.active:
            calls = EngineCalls() if prepared.messages is not None else CallStream(prepared.call_format,
                                                                                   prepared.tools.tools)
        try:
            for delta in stream:
                shown = stops.feed(delta.text)
                if delta.finish_reason is not None:
                    shown += stops.flush()
                update.tokens += delta.tokens
                self.stats.add_tokens(delta.tokens)
                now = time.perf_counter()
                if update.first_token_seconds is None and delta.tokens:
                    update.first_token_seconds = now - start
                update.delta, update.reasoning_delta = reply.add(shown, delta.tokens, now, delta.reasoning)
                if calls is not None:
                    update.delta = calls.feed(update.delta)
                    if delta.tool_calls and isinstance(calls, EngineCalls):
                        calls.add(delta.tool_calls)
                if stops.stopped or delta.finish_reason is not None:
                    update.finish_reason = "stop" if stops.stopped else delta.finish_reason
                    update.eos_token = None if stops.stopped else delta.eos_token
                    return self._settle(update, reply, start, calls, prepared.tools)
                self._show(update, reply, now - start, calls)
                if update.delta or update.reasoning_delta or delta.tokens:
                    yield update.copy()
            update.finish_reason = "cancelled" if request.cancel.is_set() else "stop"
            return self._settle(update, reply, start, calls, prepared.tools)
        except (GeneratorExit, NoModel, QueueFull):
            raise
        except Exception as exc:
            log.exception("generation failed")
            raise GenerationError(_describe_failure(exc)) from exc
        finally:
            stream.close()  # ends the backend's worker within one token if we stopped early

    @staticmethod
    def _show(update: Update, reply: reasoning.ReplyAssembler, seconds: float,
              calls: CallStream | EngineCalls | None = None) -> None:
        update.text, update.reasoning, update.thinking = reply.answer, reply.reasoning, reply.thinking
        update.parts = reply.parts()
        update.seconds = seconds
        if calls is not None:  # the answer's words without its calls, then the calls
            update.text, update.tool_calls = calls.content, tuple(calls.calls)
            update.parts = (*(p for p in update.parts if not isinstance(p, TextPart)), TextPart(calls.content),
                            *calls.calls)

    def _settle(self, update: Update, reply: reasoning.ReplyAssembler, start: float,
                calls: CallStream | EngineCalls | None = None, use: ToolUse | None = None) -> Update:
        """The last update: what the splitter still held is text after all; an unclosed block stays
        reasoning, marked incomplete. A reply with tools is read for its calls as a whole."""
        answer, thought = reply.finish(time.perf_counter())
        update.reasoning_delta += thought
        if calls is not None and use is not None:
            update.delta += calls.feed(answer)
            rest, _ = calls.finish()
            update.delta += rest
            if not use.parallel:
                del calls.calls[1:]  # parallel_tool_calls false: the first call only
            if calls.calls and update.finish_reason == "stop":
                update.finish_reason = "tool_calls"
        else:
            update.delta += answer
        self._show(update, reply, time.perf_counter() - start, calls)
        return update.copy()


class _DefaultPrompt:
    """Parlour's own prompt, handed to custom_generate_chat_prompt hooks as the `_parlour_default` keyword
    (text-generation-webui extensions reach it through `modules.chat.generate_chat_prompt`). Called with
    the user input and history the hook passes on, it builds the prompt for those. A hook that returns the
    very text it was given for the unchanged input counts as returning None: the request then goes on
    exactly as without the hook (a remote engine still gets its messages)."""

    def __init__(self, build: Callable[[str, dict[str, Any]], str], user_input: str, history: dict[str, Any],
                 text: str | None = None) -> None:
        self._build, self._input, self._history = build, user_input, history
        self.text = text  # the prompt for the unchanged input and history, once built

    def __call__(self, user_input: str, history: dict[str, Any], **_flags: Any) -> str:
        if user_input == self._input and history == self._history:
            if self.text is None:
                self.text = self._build(user_input, history)
            return self.text
        return self._build(user_input, history)

    def is_default(self, prompt: str) -> bool:
        return self.text is not None and prompt is self.text


def request_tools(request: GenerationRequest) -> ToolUse:
    """The request's tools as checked values (ToolError, a ValueError, for bad ones: the API checks first)."""
    if not request.tools or not request.is_chat:
        return ToolUse()
    return tool_use(request.tools, request.tool_choice, request.parallel_tool_calls)


@functools.lru_cache(maxsize=32)
def _parameters(function: Callable[..., Any]) -> frozenset[str]:
    """The parameter names of a backend's `stream` (looked up once per backend class, not per request)."""
    return frozenset(inspect.signature(function).parameters)


def _exact_ids(ids: list[int], then: Callable[[str, Any, Any], tuple[str, Any, Any]] | None
               ) -> Callable[[str, Any, Any], tuple[str, Any, Any]]:
    """A tokenizer hook that puts the request's own token ids in place of the prompt's tokenization
    (then runs an extension's tokenizer_modifier, if any, on them)."""
    def tokenizer(prompt: str, input_ids: Any, embeds: Any) -> tuple[str, Any, Any]:
        # the same kind of value the backend passed (a tensor on its device), so extensions see no change
        exact = input_ids.new_tensor([list(ids)]) if hasattr(input_ids, "new_tensor") else [list(ids)]
        return then(prompt, exact, embeds) if then is not None else (prompt, exact, embeds)
    return tokenizer


def _preset_from_state(preset: Preset, state: dict[str, Any]) -> Preset:
    """The preset after state_modifier: its keys read back from the state (bad values are ignored)."""
    values = {k: state[k] for k in Preset.model_fields if k in state}
    try:
        return Preset.model_validate(values)
    except ValidationError as exc:
        log.error("state_modifier produced invalid sampling values, ignored: %s", exc.errors()[0]["msg"])
        return preset


def _deltas_from_texts(texts: Iterator[str], backend: Backend, cancel: threading.Event) -> Iterator[Delta]:
    """custom_generate_reply yields the growing reply (text-generation-webui style); we stream the new part."""
    shown = ""
    for text in texts:
        if cancel.is_set():
            yield Delta("", 0, "cancelled")
            return
        if text.startswith(shown) and len(text) > len(shown):
            new, shown = text[len(shown):], text
            yield Delta(new, len(backend.tokenize(new)))
    yield Delta("", 0, "stop")


def throttle(updates: Iterator[Update], fps: float, busy_share: float = 0.25, slowest: float = 0.5,
             clock: Callable[[], float] = time.perf_counter) -> Iterator[Update]:
    """Pass the first text at once, then at most `fps` updates a second, and always the last one.

    The pace also adapts to the reader: the time between two updates stays at least 1/`busy_share`
    times what the reader spends on one (the time until it asks for the next, averaged: for the Chat
    tab, building the bubbles and Gradio's diff and send), but never more than `slowest` seconds. A long
    chat or a loaded machine then gets fewer, larger updates instead of a reader that falls behind and
    takes the CPU from the model; the browser, which renders each update, gets fewer to render too."""
    interval = 1.0 / fps
    last = 0.0
    spent: float | None = None  # the reader's time per update (a moving average)
    pending: Update | None = None
    for update in updates:
        now = clock()
        first_text = update.text and last == 0.0
        gap = max(interval, min(slowest, (spent or 0.0) / busy_share))
        if update.finish_reason is not None or first_text or update.queue_position or now - last >= gap:
            last = now
            pending = None
            yield update
            took = clock() - now
            spent = took if spent is None else (spent + took) / 2
        else:
            pending = update
    if pending is not None:
        yield pending
