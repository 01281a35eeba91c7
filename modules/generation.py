"""The one generation pipeline: every reply (chat, notebook, API) goes through `Pipeline.stream`.

    request -> prompt (chat template, sandboxed) -> queue (FIFO, bounded) -> backend.stream
            -> stop strings (partial matches held back) -> updates with counts and timings

Each request carries its own cancel Event; nothing here is global. The backend's worker never
waits for the reader: it queues tokens and the reader takes them at its own pace.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Generator, Iterator, Protocol

from modules.loaders.base import Backend, Delta
from modules.presets import Preset


class QueueFull(RuntimeError):
    """More requests are waiting than the server accepts."""


class NoModel(RuntimeError):
    """No model is loaded."""


class FairQueue:
    """First come, first served access to the model, with a bounded number of waiters.

    `acquire(cancel)` is a generator that yields the waiting position while it waits, so callers can
    show it, and returns once the caller holds a slot (`release()` gives it back). A request whose
    cancel Event is set while waiting leaves the queue.
    """

    def __init__(self, max_waiting: int, slots: int = 1) -> None:
        self.max_waiting = max_waiting
        self.slots = slots
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
                    if self._waiting[0] is ticket and self._running + weight <= self.slots:
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

    def release(self, weight: int = 1) -> None:
        with self._cond:
            self._running -= weight
            self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold every slot (in FIFO turn, never refused): for swapping the model or its adapters
        while no generation is using it."""
        for _ in self.acquire(threading.Event(), weight=self.slots, limit=False):
            pass
        try:
            yield
        finally:
            self.release(self.slots)

    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)


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
    stop: tuple[str, ...] = ()
    cancel: threading.Event = field(default_factory=threading.Event)
    user: str = "local"
    #: the last message is a partial assistant reply to extend, not a finished turn
    continue_last: bool = False


@dataclass
class Update:
    """What a reader sees: the full reply so far plus progress and, at the end, a finish reason."""

    text: str = ""
    delta: str = ""
    tokens: int = 0
    prompt_tokens: int = 0
    queue_position: int = 0
    finish_reason: str | None = None
    first_token_seconds: float | None = None
    seconds: float = 0.0
    model: str = ""


class ModelSource(Protocol):
    """What the pipeline needs from the model manager."""

    def ensure_loaded(self) -> Backend | None:
        """The loaded backend (reloading one unloaded while idle), or None."""
        ...

    def current(self) -> Backend | None:
        """The loaded backend, or None."""
        ...


class Pipeline:
    """Turns requests into streamed updates through the loaded backend."""

    def __init__(self, models: ModelSource, queue: FairQueue) -> None:
        self.models = models
        self.queue = queue
        self.stats = PipelineStats()

    def build_prompt(self, backend: Backend, request: GenerationRequest) -> str:
        if request.prompt is not None:
            return request.prompt
        if backend.chat_template is None:
            raise ValueError(f"{backend.name} has no chat template")
        extra = backend.template_vars() if hasattr(backend, "template_vars") else {}
        messages = list(request.messages or [])
        if request.continue_last and messages and messages[-1]["role"] == "assistant":
            head = backend.chat_template.render(messages[:-1], add_generation_prompt=True, **extra)
            return head + messages[-1]["content"]
        return backend.chat_template.render(messages, add_generation_prompt=True, **extra)

    def stream(self, request: GenerationRequest) -> Iterator[Update]:
        start = time.perf_counter()
        update = Update()
        # A model unloaded while idle reloads here, before the queue: swapping it in needs every slot.
        self.models.ensure_loaded()
        try:
            for pos in self.queue.acquire(request.cancel):
                update.queue_position = pos
                yield replace(update)
        except _Cancelled:
            update.finish_reason = "cancelled"
            yield replace(update)
            return
        try:
            update.queue_position = 0
            backend = self.models.current()
            if backend is None:
                raise NoModel("no model is loaded: pick one in the Model tab")
            update.model = backend.name
            if request.prompt is None and backend.chat_template is None:
                # A remote engine applies the model's own template to chat messages itself.
                stream = backend.stream_chat(list(request.messages or []), request.preset, request.cancel)
                counted = "\n".join(str(m.get("content", "")) for m in request.messages or [])
            else:
                prompt = self.build_prompt(backend, request)
                stream = backend.stream(prompt, request.preset, request.cancel)
                counted = prompt
            stops = StopStringFilter(tuple(request.stop) + tuple(request.preset.custom_stopping_strings)
                                     + tuple(backend.stop_strings))
            update.prompt_tokens = len(backend.tokenize(counted))
            self.stats.started()
            try:
                final = yield from self._run(stream, request, stops, update, start)
            finally:
                self.stats.finished()
        finally:
            self.queue.release()
        yield final  # after the model and the queue are free, so the next request can start at once

    def _run(self, stream: Iterator[Delta], request: GenerationRequest, stops: StopStringFilter, update: Update,
             start: float) -> Generator[Update, None, Update]:
        """Yield updates while tokens arrive; return the final one (with its finish reason)."""
        try:
            for delta in stream:
                shown = stops.feed(delta.text)
                if delta.finish_reason is not None:
                    shown += stops.flush()
                update.tokens += delta.tokens
                self.stats.tokens += delta.tokens
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
        finally:
            stream.close()  # ends the backend's worker within one token if we stopped early

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
