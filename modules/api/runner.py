"""Run pipeline requests for async routes, and know which caller owns which running request.

The pipeline is a blocking generator; each API request gets one thread that drives it and hands the
updates to the event loop. The route never blocks the loop, and when the client goes away the route
sets the request's cancel Event: the backend's worker stops within one token and the pipeline frees
the model for the next request at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from typing import AsyncIterator, Iterator

from starlette.requests import Request

from modules.generation import GenerationRequest, Pipeline, Update

_END = object()


class _Mailbox:
    """Updates from the pipeline thread to the event loop, merged while the loop is busy.

    The loop is woken once per batch of updates, not once per token: when it falls behind (a slow
    client, a busy machine) the waiting updates collapse into one whose `delta` is all their text,
    so the streaming side costs less exactly when CPU is short, and memory stays bounded.

    `take(not_before)` also lets the reader pace itself: it holds text that arrives before that time
    (merging it as above) but hands over an ending (finish reason, error, end) at once.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._update: Update | None = None
        self._tail: list[object] = []  # an exception and/or _END, delivered after the last update
        self._signalled = False
        self._ending = False  # a final update, an error or _END is waiting
        self._hold: asyncio.Future | None = None  # the reader's pause, cut short by an ending
        self.ready = asyncio.Event()

    def _signal(self) -> bool:
        """Under the lock: whether the loop still needs waking."""
        need, self._signalled = not self._signalled, True
        return need

    def put(self, item: object) -> None:
        ending = not isinstance(item, Update) or item.finish_reason is not None
        with self._lock:
            if isinstance(item, Update):
                if self._update is not None:
                    item = item.copy(delta=self._update.delta + item.delta,
                                     reasoning_delta=self._update.reasoning_delta + item.reasoning_delta)
                self._update = item
            else:
                self._tail.append(item)
            self._ending = self._ending or ending
            need = self._signal()
            hold = self._hold if ending else None
        try:
            if need:
                self._loop.call_soon_threadsafe(self.ready.set)
            if hold is not None:
                self._loop.call_soon_threadsafe(_resolve, hold)
        except RuntimeError:  # the loop has closed (server shutting down): nobody is listening
            pass

    async def take(self, not_before: float = 0.0) -> tuple[Update | None, list[object]]:
        """What has arrived, once something has and the loop's clock has reached `not_before`."""
        await self.ready.wait()
        delay = not_before - self._loop.time()
        if delay > 0:
            hold = self._loop.create_future()
            with self._lock:
                ending = self._ending
                self._hold = None if ending else hold
            if not ending:
                timer = self._loop.call_later(delay, _resolve, hold)
                try:
                    await hold
                finally:
                    timer.cancel()
                    with self._lock:
                        self._hold = None
        with self._lock:
            self.ready.clear()
            self._signalled = False
            self._ending = False
            update, self._update = self._update, None
            tail, self._tail = self._tail, []
        return update, tail


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


async def run_updates(pipeline: Pipeline, request: GenerationRequest, final_only: bool = False,
                      interval: float = 0.0) -> AsyncIterator[Update]:
    """The pipeline's updates for `request`, produced in a worker thread. Closing this iterator
    (client gone, route done) cancels the generation. Errors (QueueFull, NoModel, ...) re-raise here.
    With `final_only` only the last update crosses to the event loop: a non-streaming reply needs
    nothing else. Updates that pile up while the loop is busy arrive merged (see `_Mailbox`).

    `interval` (seconds) paces the text: after an update with text, the next one comes no sooner
    than that (what arrives meanwhile is merged into it). The first text and the ending are never
    held. Why: on a small machine each streamed chunk costs the event loop a wake-up and a socket
    write, and the loop shares the GIL and the cores with the model; when tokens come faster than a
    reader can see (hundreds a second) a chunk per few tokens keeps the model at full speed.
    """
    loop = asyncio.get_running_loop()
    mailbox = _Mailbox(loop)
    if request.cache_scope is None:
        request.cache_scope = "api"  # see GenerationRequest.cache_scope

    def drive() -> None:
        updates = pipeline.stream(request)
        try:
            last = None
            for update in updates:
                if not final_only or update.finish_reason is not None:
                    mailbox.put(update)
                last = update
            if final_only and last is not None and last.finish_reason is None:
                mailbox.put(last)
        except BaseException as exc:  # handed to the route, which answers with the right status
            mailbox.put(exc)
        finally:
            updates.close()
            mailbox.put(_END)

    threading.Thread(target=drive, name="api-request", daemon=True).start()
    not_before = 0.0
    try:
        while True:
            update, tail = await mailbox.take(not_before)
            if update is not None:
                handed = loop.time()
                yield update
                if interval and (update.delta or update.reasoning_delta):
                    not_before = handed + interval
            for item in tail:
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
    finally:
        request.cancel.set()  # no-op after a normal end; otherwise stops the model within one token


async def cancel_on_disconnect(http: Request, *cancels: threading.Event) -> None:
    """Set the `cancels` when the client hangs up (for non-streaming routes, which Starlette does not watch)."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            for cancel in cancels:
                cancel.set()
            return


class CallerRequests:
    """Running API requests by caller, so /v1/internal/stop-generation stops only the caller's own.

    A caller is the client's address plus the key it sent: two scripts on one machine using
    different keys, or different machines, do not stop each other's replies.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, set[threading.Event]] = collections.defaultdict(set)
        self.disconnects = 0

    @contextlib.contextmanager
    def track(self, caller: str, cancel: threading.Event) -> Iterator[None]:
        with self._lock:
            self._running[caller].add(cancel)
        try:
            yield
        finally:
            with self._lock:
                self._running[caller].discard(cancel)
                if not self._running[caller]:
                    del self._running[caller]

    def stop(self, caller: str) -> int:
        """Cancel every running request of `caller`; how many there were."""
        with self._lock:
            events = list(self._running.get(caller, ()))
        for event in events:
            event.set()
        return len(events)

    def count_disconnect(self) -> None:
        with self._lock:
            self.disconnects += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"api_running": sum(len(v) for v in self._running.values()), "api_disconnects": self.disconnects}
