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


async def run_updates(pipeline: Pipeline, request: GenerationRequest, final_only: bool = False) -> AsyncIterator[Update]:
    """The pipeline's updates for `request`, produced in a worker thread. Closing this iterator
    (client gone, route done) cancels the generation. Errors (QueueFull, NoModel, ...) re-raise here.
    With `final_only` only the last update crosses to the event loop: a non-streaming reply needs
    nothing else, and waking the loop for every token would take CPU from the model."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()

    def post(item: object) -> None:
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, item)
        except RuntimeError:  # the loop has closed (server shutting down): nobody is listening
            request.cancel.set()

    def drive() -> None:
        updates = pipeline.stream(request)
        try:
            last = None
            for update in updates:
                if not final_only or update.finish_reason is not None:
                    post(update)
                last = update
            if final_only and last is not None and last.finish_reason is None:
                post(last)
        except BaseException as exc:  # handed to the route, which answers with the right status
            post(exc)
        finally:
            updates.close()
            post(_END)

    threading.Thread(target=drive, name="api-request", daemon=True).start()
    try:
        while True:
            item = await inbox.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        request.cancel.set()  # no-op after a normal end; otherwise stops the model within one token


async def cancel_on_disconnect(http: Request, cancel: threading.Event) -> None:
    """Set `cancel` when the client hangs up (for non-streaming routes, which Starlette does not watch)."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
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
