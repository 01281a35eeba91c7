"""The one generation pipeline: every reply (chat, notebook, API) goes through `Pipeline.stream`.

    request -> queue (FIFO, bounded) -> extensions' prompt hooks + prompt (chat template, sandboxed)
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
from modules.chat import ChatPrompt, PromptOptions, build_chat_prompt, engine_messages, options_state
from modules.constraints import stop_strings
from modules.extensions import Extensions, history_to_messages, messages_to_history
from modules.loaders import registry
from modules.loaders.base import Backend, Delta, GenerationHooks
from modules.presets import Preset
from modules.turns import Part, Turn, turns_from_messages

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
    #: the reply as typed parts, in order (reasoning blocks with their token counts and seconds, text)
    parts: tuple[Part, ...] = ()

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


class ModelSource(Protocol):
    """What the pipeline needs from the model manager."""

    def ensure_loaded(self) -> Backend | None:
        """The loaded backend (reloading one unloaded while idle), or None."""
        ...

    def current(self) -> Backend | None:
        """The loaded backend, or None."""
        ...


def _history_hook(ext: Extensions) -> Callable[[list[Turn]], list[Turn]] | None:
    """history_modifier on text-generation-webui's shape ({"internal": [[user, bot], ...]}). A turn it
    gives back unchanged keeps its parts (reasoning); a changed one becomes plain text."""
    if not ext.has("history_modifier"):
        return None

    def apply(turns: list[Turn]) -> list[Turn]:
        plain = [{"role": t.role, "content": t.text} for t in turns]
        changed = history_to_messages(ext.history(messages_to_history(plain)), [])
        out = []
        for i, message in enumerate(changed):
            same = i < len(turns) and turns[i].role == message["role"] and turns[i].text == message["content"]
            out.append(turns[i] if same else Turn.of(message["role"], message["content"]))
        return [t for t in out if t.role in ("user", "assistant")]

    return apply


class Pipeline:
    """Turns requests into streamed updates through the loaded backend."""

    def __init__(self, models: ModelSource, queue: FairQueue, extensions: Extensions | None = None) -> None:
        self.models = models
        self.queue = queue
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
                return Prepared(prompt, start.preset, state, start.user_input, True)
        if registry.capabilities(backend).engine_templates:
            # The engine applies the model's own template itself whenever messages say what the turn means.
            messages = engine_messages(history, options)
            if messages is not None:
                text = "\n".join(str(m.get("content", "")) for m in messages)
                return Prepared(text, start.preset, state, start.user_input, True, messages=messages)
        built = self._build(backend, request, history, hooks)
        return Prepared(built.text, start.preset, state, start.user_input, True, stops=tuple(built.stops),
                        context_length=built.context_length, turns_dropped=built.turns_dropped,
                        reasoning_state=reasoning.prompt_state(backend.reasoning_format, built.text))

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
        if prepared.messages is not None:
            return backend.stream_chat(prepared.messages, prepared.preset, request.cancel)
        accepts = _parameters(getattr(backend.stream, "__func__", backend.stream))
        extra: dict[str, Any] = {}
        if (hooks.tokenizer or hooks.logits_processors) and "hooks" in accepts:
            extra["hooks"] = hooks
        if "cache_scope" in accepts:
            extra["cache_scope"] = request.cache_scope or f"user:{request.user}"
        return backend.stream(prepared.prompt, prepared.preset, request.cancel, **extra)

    def stream(self, request: GenerationRequest) -> Iterator[Update]:
        start = time.perf_counter()
        update = Update()
        claim = getattr(self.models, "claimed", None)  # a training job owns the model (ModelManager.claim)
        if claim is not None and claim.refuse_requests:
            wait = max(1, int(claim.retry_after()))
            raise ModelBusy(f"{claim.owner} is using {claim.model}; try again in about {wait} s", wait)
        # A model unloaded while idle reloads here, before the queue: swapping it in needs every slot.
        self.models.ensure_loaded()
        try:
            for pos in self.queue.acquire(request.cancel):
                update.queue_position = pos
                yield update.copy()
        except _Cancelled:
            update.finish_reason = "cancelled"
            yield update.copy()
            return
        try:
            update.queue_position = 0
            backend = self.models.current()
            if backend is None:
                raise NoModel("no model is loaded: pick one in the Model tab")
            update.model = backend.name
            prepared = self.prepare(backend, request)
            # prepared.preset.custom_stopping_strings already holds request.stop (see prepare's state); a
            # constrained reply is cut only at those (constraints.stop_strings)
            stops = StopStringFilter(stop_strings(prepared.preset, prepared.stops + tuple(backend.stop_strings)))
            counted = self.extensions.tokenized_length(prepared.prompt)
            update.prompt_tokens = counted if counted is not None else len(backend.tokenize(prepared.prompt))
            update.context_length = prepared.context_length or backend.context_length
            update.turns_dropped = prepared.turns_dropped

            self.stats.started()
            try:
                final = yield from self._run(backend, prepared, request, stops, update, start)
            finally:
                self.stats.finished()
        finally:
            self.queue.release()
        # after the model and the queue are free, so the next request can start at once
        yield self._finish(final, prepared)

    def _run(self, backend: Backend, prepared: Prepared, request: GenerationRequest, stops: "StopStringFilter",
             update: Update, start: float) -> Generator[Update, None, Update]:
        """Yield updates while tokens arrive; return the final one (with its finish reason). A chat
        reply's reasoning blocks are split from its answer here, after stop strings."""
        stream = self._source(backend, prepared, request, stops)
        reply = reasoning.ReplyAssembler(backend.reasoning_format, prepared.reasoning_state, split=prepared.is_chat)
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
                if stops.stopped or delta.finish_reason is not None:
                    update.finish_reason = "stop" if stops.stopped else delta.finish_reason
                    return self._settle(update, reply, start)
                self._show(update, reply, now - start)
                if update.delta or update.reasoning_delta or delta.tokens:
                    yield update.copy()
            update.finish_reason = "cancelled" if request.cancel.is_set() else "stop"
            return self._settle(update, reply, start)
        except (GeneratorExit, NoModel, QueueFull):
            raise
        except Exception as exc:
            log.exception("generation failed")
            raise GenerationError(_describe_failure(exc)) from exc
        finally:
            stream.close()  # ends the backend's worker within one token if we stopped early

    @staticmethod
    def _show(update: Update, reply: reasoning.ReplyAssembler, seconds: float) -> None:
        update.text, update.reasoning, update.thinking = reply.answer, reply.reasoning, reply.thinking
        update.parts = reply.parts()
        update.seconds = seconds

    def _settle(self, update: Update, reply: reasoning.ReplyAssembler, start: float) -> Update:
        """The last update: what the splitter still held is text after all; an unclosed block stays
        reasoning, marked incomplete."""
        answer, thought = reply.finish(time.perf_counter())
        update.delta += answer
        update.reasoning_delta += thought
        self._show(update, reply, time.perf_counter() - start)
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


@functools.lru_cache(maxsize=32)
def _parameters(function: Callable[..., Any]) -> frozenset[str]:
    """The parameter names of a backend's `stream` (looked up once per backend class, not per request)."""
    return frozenset(inspect.signature(function).parameters)


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
