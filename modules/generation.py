"""The one generation pipeline: every reply (chat, notebook, API) goes through `Pipeline.stream`.

    request -> its model's queue (FIFO, bounded; the model loads first if needed) -> extensions' prompt hooks + prompt (chat template, sandboxed)
            -> backend.stream (or an extension's custom_generate_reply)
            -> stop strings (partial matches held back) -> updates with counts and timings
            -> extensions' output_modifier and reply_footer on the final update

Each request carries its own cancel Event; nothing here is global. The backend's worker never
waits for the reader: it queues tokens and the reader takes them at its own pace.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Generator, Iterator, Protocol

from pydantic import ValidationError

from modules.extensions import Extensions, history_to_messages, messages_to_history
from modules.loaders.base import Backend, Delta, GenerationHooks
from modules.presets import Preset

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """More requests are waiting than the server accepts."""


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
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Return the text that is safe to show now."""
        if self.stopped:
            return ""
        buf = self._held + text
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
    """One generation: either raw `prompt` text (notebook) or chat `messages` for the template."""

    preset: Preset
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    #: the model to answer with (a name or alias; None: the default model); loaded just in time if needed
    model: str | None = None
    stop: tuple[str, ...] = ()
    cancel: threading.Event = field(default_factory=threading.Event)
    user: str = "local"
    #: the last message is a partial assistant reply to extend, not a finished turn
    continue_last: bool = False
    #: extra values for extensions' `state` (chat mode, names, ...), over the preset's values
    state: dict[str, Any] = field(default_factory=dict)
    #: False when the caller already ran chat_input_modifier / input_modifier on the new user message
    apply_input_hooks: bool = True
    #: builds the prompt for the model that holds the slot (chat.build_chat_prompt), given the backend and
    #: the extensions' ChatHooks: returns an object with text, stops, context_length and turns_dropped.
    #: Used instead of `prompt`/`messages` when set, except for a backend without a local template
    #: (remote engines), which gets `messages` if the request has them.
    build: Callable[[Backend, "ChatHooks"], Any] | None = None


@dataclass
class Update:
    """What a reader sees: the full reply so far plus progress and, at the end, a finish reason."""

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


@dataclass(frozen=True)
class ChatHooks:
    """The extensions' chat-prompt hooks, handed to a request's `build` (None where no extension has one)."""

    history: Callable[[list[dict[str, str]]], list[dict[str, str]]] | None = None
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


class ModelSource(Protocol):
    """What the pipeline needs from the model manager (modules/models.py)."""

    def acquire(self, name: str | None, cancel: threading.Event) -> Generator[Any, None, Any]:
        """Wait for a slot on the model `name` (None: the default one), loading it if needed; yields waits
        (`.position`, `.loading`) and returns a lease (`.backend`, `.release()`)."""
        ...


class Pipeline:
    """Turns requests into streamed updates through the backend of the model each one names."""

    def __init__(self, models: ModelSource, extensions: Extensions | None = None) -> None:
        self.models = models
        self.stats = PipelineStats()
        self.extensions = extensions if extensions is not None else Extensions(entry_points=False)

    def build_prompt(self, backend: Backend, request: GenerationRequest) -> str:
        """The prompt text `request` gives this backend, before extension hooks (previews, checks)."""
        if request.prompt is not None:
            return request.prompt
        if backend.chat_template is None:
            raise ValueError(f"{backend.name} has no chat template")
        if request.build is not None:
            return request.build(backend, None).text
        extra = backend.template_vars()
        messages = list(request.messages or [])
        if request.continue_last and messages and messages[-1]["role"] == "assistant":
            head = backend.chat_template.render(messages[:-1], add_generation_prompt=True, **extra)
            return head + messages[-1]["content"]
        return backend.chat_template.render(messages, add_generation_prompt=True, **extra)

    def prepare(self, backend: Backend, request: GenerationRequest) -> Prepared:
        """Run the prompt-side extension hooks and build the prompt (text-generation-webui's order)."""
        ext = self.extensions
        is_chat = request.prompt is None
        state = ext.state({**request.preset.model_dump(), "mode": "chat" if is_chat else "notebook",
                           "user": request.user,
                           "custom_stopping_strings": list(request.stop) + list(request.preset.custom_stopping_strings),
                           **request.state})
        preset = _preset_from_state(request.preset, state)
        if not is_chat:
            prompt = ext.input(request.prompt, state, is_chat=False) if request.apply_input_hooks else request.prompt
            return Prepared(prompt, preset, state, prompt, False)
        if request.build is not None and not (backend.chat_template is None and request.messages is not None):
            return self._prepare_built(backend, request, preset, state)
        messages = [dict(m) for m in request.messages or []]
        new_turn = bool(messages) and messages[-1]["role"] == "user" and not request.continue_last
        if new_turn and request.apply_input_hooks:
            text, _visible = ext.chat_input(messages[-1]["content"], messages[-1]["content"], state)
            messages[-1]["content"] = ext.input(text, state, is_chat=True)
        user_input = messages[-1]["content"] if new_turn else ""
        lead = 0
        while lead < len(messages) and messages[lead]["role"] == "system":
            lead += 1
        if ext.has("history_modifier"):
            messages = history_to_messages(ext.history(messages_to_history(messages[lead:])), messages[:lead])
        if ext.has("custom_generate_chat_prompt"):
            past = messages_to_history(messages[lead:-1] if new_turn else messages[lead:])
            prompt = ext.chat_prompt(user_input, {**state, "history": past}, history=past,
                                     _continue=request.continue_last, impersonate=False)
            if prompt is not None:
                return Prepared(prompt, preset, state, user_input, True)
        if backend.chat_template is None:
            # A remote engine applies the model's own template to the messages itself.
            text = "\n".join(str(m.get("content", "")) for m in messages)
            return Prepared(text, preset, state, user_input, True, messages=messages)
        chat_request = replace(request, messages=messages)
        prompt = self.build_prompt(backend, chat_request)
        if not request.continue_last and ext.has("bot_prefix_modifier"):
            # The bot prefix is what the template's generation prompt adds (e.g. "<|im_start|>assistant\n").
            extra = backend.template_vars()
            bare = backend.chat_template.render(messages, add_generation_prompt=False, **extra)
            if prompt.startswith(bare):
                prompt = bare + ext.bot_prefix(prompt[len(bare):], state)
        return Prepared(prompt, preset, state, user_input, True)

    def _prepare_built(self, backend: Backend, request: GenerationRequest, preset: Preset,
                       state: dict[str, Any]) -> Prepared:
        """A chat request whose prompt modules/chat.py builds (modes, characters, truncation); the
        extensions' history and bot-prefix hooks run inside it, at the steps text-generation-webui has them."""
        ext = self.extensions
        hooks = ChatHooks(
            history=(lambda turns: history_to_messages(ext.history(messages_to_history(turns)), []))
            if ext.has("history_modifier") else None,
            bot_prefix=(lambda prefix: ext.bot_prefix(prefix, state)) if ext.has("bot_prefix_modifier") else None)
        built = request.build(backend, hooks)
        return Prepared(built.text, preset, state, state.get("user_input", ""), True, stops=tuple(built.stops),
                        context_length=built.context_length, turns_dropped=built.turns_dropped)

    def _finish(self, update: Update, prepared: Prepared) -> Update:
        """The output-side hooks: output_modifier on the finished text, then reply_footer."""
        update.raw_text = update.text
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
        if (hooks.tokenizer or hooks.logits_processors) and "hooks" in inspect.signature(backend.stream).parameters:
            return backend.stream(prepared.prompt, prepared.preset, request.cancel, hooks=hooks)
        return backend.stream(prepared.prompt, prepared.preset, request.cancel)

    def stream(self, request: GenerationRequest) -> Iterator[Update]:
        start = time.perf_counter()
        update = Update()
        try:
            lease = yield from self._wait_for_model(request, update)
        except _Cancelled:
            update.finish_reason = "cancelled"
            yield replace(update)
            return
        try:
            update.queue_position, update.loading = 0, ""
            backend = lease.backend
            update.model = backend.name
            prepared = self.prepare(backend, request)
            # prepared.preset.custom_stopping_strings already holds request.stop (see prepare's state)
            stops = StopStringFilter(tuple(prepared.preset.custom_stopping_strings) + prepared.stops
                                     + tuple(backend.stop_strings))
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
                yield replace(update)
        finally:
            waits.close()  # a reader that left while waiting leaves the queue too

    def _run(self, backend: Backend, prepared: Prepared, request: GenerationRequest, stops: "StopStringFilter",
             update: Update, start: float) -> Generator[Update, None, Update]:
        """Yield updates while tokens arrive; return the final one (with its finish reason)."""
        stream = self._source(backend, prepared, request, stops)
        try:
            for delta in stream:
                shown = stops.feed(delta.text)
                if delta.finish_reason is not None:
                    shown += stops.flush()
                update.tokens += delta.tokens
                self.stats.add_tokens(delta.tokens)
                if update.first_token_seconds is None and delta.tokens:
                    update.first_token_seconds = time.perf_counter() - start
                update.delta = shown
                update.text += shown
                update.seconds = time.perf_counter() - start
                if stops.stopped or delta.finish_reason is not None:
                    update.finish_reason = "stop" if stops.stopped else delta.finish_reason
                    return replace(update)
                if shown or delta.tokens:
                    yield replace(update)
            update.finish_reason = "cancelled" if request.cancel.is_set() else "stop"
            return replace(update)
        except (GeneratorExit, NoModel, QueueFull):
            raise
        except Exception as exc:
            log.exception("generation failed")
            raise GenerationError(_describe_failure(exc)) from exc
        finally:
            stream.close()  # ends the backend's worker within one token if we stopped early


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


def throttle(updates: Iterator[Update], fps: float) -> Iterator[Update]:
    """Pass the first text at once, then at most `fps` updates a second, and always the last one."""
    interval = 1.0 / fps
    last = 0.0
    pending: Update | None = None
    for update in updates:
        now = time.perf_counter()
        first_text = update.text and last == 0.0
        if update.finish_reason is not None or first_text or now - last >= interval or update.queue_position:
            last = now
            pending = None
            yield update
        else:
            pending = update
    if pending is not None:
        yield pending
