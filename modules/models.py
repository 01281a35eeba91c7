"""ModelManager: what is in `models/`, and the models loaded from it: several at once, within a budget,
each loaded just in time for the request that names it. The design (one gate per model) is in the
ModelManager docstring; the budget itself in modules/budget.py. A long job that needs one model to
itself (training a LoRA) `claim`s it: that model is never evicted meanwhile, and the others stay servable.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterator

from modules import reasoning
from modules.budget import Budget, Footprint, measured
from modules.generation import FairQueue, ModelBusy, NoModel
from modules.loaders import registry
from modules.loaders.base import Backend, LoadError
from modules.model_catalog import (ModelCatalog, ModelClaimed, ModelError, ModelNotFound, ModelSettings,
                                   ModelSettingsStore, ModelTooLarge, SettingsFileError)
from modules.paths import UnsafeName, safe_child
from modules.settings import CpuThreads

__all__ = ["Claim", "ModelCatalog", "ModelClaimed", "ModelError", "ModelManager", "ModelNotFound", "ModelSettings", "ModelSettingsStore",
           "ModelTooLarge", "SettingsFileError", "describe_backend"]

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Claim:
    """Who holds a model for a long job, and what requests for it get meanwhile.

    `refuse_requests`: new generation requests for that model fail at once (ModelBusy: the API's 503 with
    Retry-After) instead of waiting in its queue; `retry_after()` is the job's own estimate of the
    seconds it has left."""

    owner: str
    model: str
    refuse_requests: bool = False
    retry_after: Callable[[], int] = lambda: 60

    def describe(self) -> str:
        return f"{self.owner} is using {self.model}: stop it first (Training tab)"

    def seconds_left(self) -> int:
        return max(1, int(self.retry_after()))


@dataclass
class _Load:
    """One load of one model; every request that waits for it gets its outcome."""

    seq: int
    loader: str | None
    options: dict[str, Any] | None
    progress: Progress | None = None
    make_default: bool = False
    #: set at the start for the model loaded at server start: requests without a name wait for it
    default_now: bool = False
    #: the load waits for this Event first (the server's start: see server.create_app)
    after: threading.Event | None = None
    done: threading.Event = field(default_factory=threading.Event)
    error: ModelError | None = None
    backend: Backend | None = None
    #: (fraction, message) for `progress`, handed to the caller's thread (Gradio's progress lives there);
    #: None at the end
    messages: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)

    def say(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.messages.put((fraction, message))

    def raise_error(self) -> None:
        if self.error is not None:  # a fresh exception per waiter: they are raised in several threads
            raise type(self.error)(str(self.error))


class _Slot:
    """One servable model: its backend while loaded, its queue (the gate), what happened to it."""

    def __init__(self, name: str, max_waiting: int) -> None:
        self.name = name
        self.backend: Backend | None = None
        self.footprint: Footprint | None = None
        self.queue = FairQueue(max_waiting, slots=self._open_slots)
        self.pending: _Load | None = None
        self.load_seq = 0
        self.failed_seq = 0  # seq of the last load that failed (0: none did)
        self.failure: str | None = None
        #: (loader, options) of its last load by name: what a reload after eviction or idle uses
        self.recipe: tuple[str | None, dict[str, Any] | None] = (None, None)
        self.leases = 0  # requests generating on it now, plus holders of exclusive()
        self.planning = 0  # API requests waiting for its load before they queue (see backend_for)
        self.last_used = 0.0
        self.unloaded_because: str | None = None  # "idle", "budget" or "unload": for the status line
        self.claim: Claim | None = None  # the long job holding it (see ModelManager.claim)
        self.counts: collections.Counter[str] = collections.Counter()

    def _open_slots(self) -> int:
        """How many requests may generate at once: 0 while it is not loaded (the closed gate)."""
        backend = self.backend
        return getattr(backend, "max_concurrency", 1) if backend is not None else 0

    def refuse_if_claimed(self) -> None:
        """Loads, unloads and adapter changes of a claimed model wait for no one: they are refused."""
        if self.claim is not None:
            raise ModelClaimed(self.claim.describe(), self.claim.seconds_left())

    def busy(self) -> bool:
        return self.leases > 0 or self.planning > 0 or self.queue.waiting() > 0

    def waiting(self) -> int:
        """Requests waiting for it: in its queue, and API requests waiting for its load."""
        return self.queue.waiting() + self.planning

    def state(self) -> str:
        return "loading" if self.pending is not None else "loaded" if self.backend is not None else "available"


class _Watch:
    """What a request waiting in a model's queue watches instead of its bare cancel Event: that Event,
    or a failed load of the model since the request started waiting (FairQueue only calls `is_set`)."""

    def __init__(self, cancel: threading.Event, slot: _Slot, since: int) -> None:
        self.cancel, self.slot, self.since = cancel, slot, since

    def is_set(self) -> bool:
        return self.cancel.is_set() or self.slot.failed_seq >= self.since


@dataclass(frozen=True)
class Wait:
    """A request's place while it waits for its model: 1-based position in that model's queue, and the
    model's name while it is being loaded for it."""

    position: int
    loading: str | None = None


class Lease:
    """A request's slot on a loaded model; the model is not unloaded until every lease is released."""

    def __init__(self, manager: "ModelManager", slot: _Slot, backend: Backend) -> None:
        self.backend = backend
        self._manager, self._slot, self._released = manager, slot, False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager._release(self._slot)


class ModelManager(ModelCatalog):
    """The models in models/ (and remote engines'), and the ones loaded now.

    Every model a request can name has a place here (`_Slot`): its backend while it is loaded, and its
    own queue (a `FairQueue`) — the one gate for that model. Requests for different models wait in
    different queues, so they run side by side; each Transformers model has its own batch engine.

    The gate, and how loading and evicting go through it:

    - A model that is not loaded has a closed gate (no slots): requests for it wait in its queue, their
      position visible. The first request that finds it unloaded starts ONE load (a thread); every
      other request for it joins that load. Loading opens the gate; a failed load wakes every request
      waiting for it with the load's one-line reason, and touches no other model.
    - Evicting, unloading and swapping in a reloaded model take every slot of the gate
      (`FairQueue.exclusive()`), as LoRA changes, perplexity runs and training do (`exclusive(name)`):
      running requests finish first, later ones queue behind and, if the model is gone, load it again.
      So a model is never unloaded under a running request.
    - Loads run one at a time (`_build_lock`): the budget is decided on a settled set of models, and two
      models never peak in memory together. A reloaded model is built beside the old one and swapped in
      only once it works.
    - The budget (`modules.budget.Budget`: --max-loaded-models and the GPU/CPU memory budgets): a model
      that cannot fit even alone is refused before anything is touched (`ModelTooLarge`). Memory budgets
      make room before the load (an estimate from the weight files); the model count is enforced after
      it succeeds (so a failed load leaves the others loaded). Room is made by unloading the least
      recently used model that is idle, before the new model's requests start; when none is idle, the
      least recently used one is drained while the new one already answers (its running requests
      finish, newer ones queue behind the eviction and load it again).
    - The API plans a request (tokenizes, checks the context) before it queues: `backend_for` waits
      for the load without taking a slot.
    - `--idle-unload-minutes` applies to each model on its own; an unloaded model reloads on its next
      request with the options it had.

    The default model (`current()`) is the one requests without a model name use: the one loaded last
    by name (start, Model tab, /v1/internal/model/load). Loads that happen just in time for a request
    do not change it. Whatever must own a model for a short while (an adapter change, a perplexity run)
    holds `exclusive(name)`; a long job (training) holds `claim(owner, model)`, which is `exclusive`
    plus: the model is never evicted, loads, unloads and adapter changes of it are refused, and its
    requests wait (or, if the job says so, get ModelBusy at once) while every other model stays servable.
    """

    def __init__(self, models_dir: Path, loras_dir: Path, offload_dir: Path, threads: CpuThreads,
                 trust_remote_code: bool = False, batch_size: int = 1, budget: Budget | None = None,
                 max_waiting: int = 64, aliases: dict[str, str] | None = None,
                 remote_options: dict[str, Any] | None = None, gpu_available: bool | None = None) -> None:
        super().__init__(models_dir, loras_dir, offload_dir, threads, trust_remote_code, batch_size, remote_options,
                         gpu_available)
        self.budget = budget or Budget()
        self.max_waiting = max_waiting
        self.aliases = dict(aliases or {})
        self._cond = threading.Condition(threading.RLock())  # guards every slot's fields and `default`
        self._build_lock = threading.Lock()  # one load at a time (see the class docstring)
        self._slots: dict[str, _Slot] = {}
        self.default: str | None = None
        self.last_error: str | None = None

    # ---- names
    def canonical(self, name: str | None) -> str:
        """The model a request's `model` means: an alias's target; the default model for None.
        Raises NoModel (no name and no default) or ModelNotFound."""
        if not name:
            if self.default is None:
                raise NoModel("no model is loaded: pick one in the Model tab")
            return self.default
        target = self.aliases.get(name, name)
        with self._cond:
            slot = self._slots.get(target)
            if slot is not None and (slot.backend is not None or slot.pending is not None):
                return target
        if registry.loader_for_name(target) is not None:
            # Only what the engine lists: a client's made-up names must not each get a place here.
            if self.remote_options is not None and target in self.remote_models(self.remote_options):
                return target
        elif target in self.list():
            return target
        alias = f" (the alias of {target!r})" if target != name else ""
        raise ModelNotFound(f"the model {name!r}{alias} does not exist")

    def choices(self) -> list[str]:
        """Names for dropdowns: the models in models/, then loaded ones from elsewhere (remote engines)."""
        names = self.list()
        with self._cond:
            extra = sorted(n for n, s in self._slots.items()
                           if (s.backend is not None or s.pending is not None) and n not in names)
        return names + extra

    def current(self) -> Backend | None:
        """The default model's backend (None when it is not loaded)."""
        return self.get(None)

    def get(self, name: str | None) -> Backend | None:
        """The backend of `name` (None: the default model) if it is loaded; never loads anything."""
        with self._cond:
            target = self.default if not name else self.aliases.get(name, name)
            slot = self._slots.get(target) if target else None
            return slot.backend if slot is not None else None

    @property
    def loading(self) -> str | None:
        """A model being loaded now (the first one, by name), or None."""
        with self._cond:
            return next((n for n, s in self._slots.items() if s.pending is not None), None)

    # ---- loading and unloading
    def _slot(self, name: str) -> _Slot:
        with self._cond:
            slot = self._slots.get(name)
            if slot is None:
                slot = self._slots[name] = _Slot(name, self.max_waiting)
            return slot

    def _start(self, slot: _Slot, loader: str | None, options: dict[str, Any] | None,
               progress: Progress | None = None, make_default: bool = False, default_now: bool = False,
               after: threading.Event | None = None) -> _Load:
        """Start a load of `slot` in a thread (call with the lock held)."""
        slot.load_seq += 1
        job = _Load(slot.load_seq, loader, options, progress, make_default, default_now, after)
        slot.pending = job
        if default_now:
            self.default = slot.name
        threading.Thread(target=self._run_load, args=(slot, job), name=f"model-load-{slot.name}", daemon=True).start()
        return job

    def _want(self, slot: _Slot) -> int:
        """A request wants `slot`: start its load unless it is loaded or loading (call with the lock held).
        Returns the first load sequence number whose failure concerns the request."""
        if slot.backend is None and slot.pending is None:
            loader, options = slot.recipe
            self._start(slot, loader, options if options is not None else self._jit_options(slot.name))
        return slot.pending.seq if slot.pending is not None else slot.load_seq + 1

    def _run_load(self, slot: _Slot, job: _Load) -> None:
        if job.after is not None:
            job.after.wait()
        with self._build_lock:
            try:
                self._load_locked(slot, job)
            except Exception as exc:  # every waiter must hear how it ended, whatever went wrong
                self._failed(slot, job, exc)
            else:
                self._make_room(slot, None, idle_only=True)  # quick: the idle ones go before requests start
            finally:
                self._finish(slot, job)  # its requests go on now (or hear why not)
            if job.error is None:
                self._make_room(slot, None)  # still too many: drain busy ones, while this one already answers

    def _load_locked(self, slot: _Slot, job: _Load) -> None:
        name = slot.name
        chosen, validated, need = self.plan(name, job.loader, job.options)
        problem = self.budget.alone_problem(need)
        if problem:
            raise ModelTooLarge(f"{name} {problem}")
        self._refuse_if_held_room(slot, need)
        self._make_room(slot, need)  # memory budgets: before the load (the model count: after it)
        job.say(0.1, f"loading {name} with {chosen}")
        try:
            backend = self._build(name, chosen, validated)
        except LoadError as exc:
            raise ModelError(str(exc)) from exc
        except MemoryError as exc:
            raise ModelError(f"{name}: out of memory while loading") from exc
        self._apply_saved_reasoning(name, backend)
        footprint = measured(backend.info(), need)
        job.say(0.9, "swapping the model in")
        self._install(slot, backend, footprint)
        with self._cond:
            slot.recipe = (chosen, validated.model_dump(mode="python"))
            slot.counts["loads"] += 1
            job.backend = backend
            if job.make_default:
                self.default = name
            self.last_error = None
        job.say(1.0, f"loaded {name}")
        log.info("loaded %s with %s in %.1f s (%s)", name, chosen, getattr(backend, "load_seconds", 0.0), footprint)

    def _refuse_if_held_room(self, slot: _Slot, need: Footprint) -> None:
        """A load that fits the budget only if a claimed model (one being trained) went is refused: that
        one is never evicted, so the new one would never get its room."""
        with self._cond:
            held = [s for s in self._slots.values() if s is not slot and s.claim is not None and s.backend is not None]
            if not held or self.budget.fits([s.footprint or Footprint("cpu", 0.0) for s in held], need):
                return
            claim = held[0].claim
        assert claim is not None
        raise ModelClaimed(f"{claim.describe()} — {slot.name} does not fit beside it ({self.budget.describe()})",
                           claim.seconds_left())

    def _failed(self, slot: _Slot, job: _Load, exc: Exception) -> None:
        error = exc if isinstance(exc, ModelError) else ModelError(
            f"{slot.name}: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}")
        if not isinstance(exc, ModelError):
            log.exception("loading %s failed unexpectedly", slot.name)
        log.error("could not load %s: %s", slot.name, error)
        with self._cond:
            job.error = error
            slot.failed_seq, slot.failure = job.seq, str(error)
            slot.counts["failures"] += 1
            self.last_error = str(error)
            if job.default_now and self.default == slot.name and slot.backend is None:
                self.default = None

    def _finish(self, slot: _Slot, job: _Load) -> None:
        with self._cond:
            if slot.pending is job:
                slot.pending = None
            job.done.set()
        job.messages.put(None)
        slot.queue.wake()  # the gate opened (or the load failed): the waiters look again

    def _install(self, slot: _Slot, backend: Backend, footprint: Footprint) -> None:
        """Put a freshly built backend in: at once if the slot is empty (its gate is closed, no one can be
        using it), else swapped under the gate once the running requests on the old one finish."""
        with self._cond:
            empty = slot.backend is None
            if empty:
                slot.backend, slot.footprint, slot.unloaded_because = backend, footprint, None
                slot.last_used = time.monotonic()
        if empty:
            return
        with slot.queue.exclusive():
            with self._cond:
                old, slot.backend, slot.footprint = slot.backend, backend, footprint
                slot.last_used = time.monotonic()
        if old is not None:
            old.unload()

    def _make_room(self, slot: _Slot, need: Footprint | None, idle_only: bool = False) -> None:
        """Unload other models until the budget holds: before a load (`need`: memory budgets only) or
        after one (everything, the new model included). The least recently used idle model goes first;
        when none is idle, the least recently used one is drained (see `_evict`) unless `idle_only`."""
        while True:
            with self._cond:
                others = [s for s in self._slots.values() if s is not slot and s.backend is not None]
                footprints = [s.footprint or Footprint("cpu", 0.0) for s in others]
                if need is not None:
                    room = self.budget.fits(footprints, need, count=False)
                else:
                    room = self.budget.fits(footprints + [slot.footprint or Footprint("cpu", 0.0)])
                if room:
                    return
                candidates = [s for s in others if s.pending is None and s.claim is None
                              and s.footprint and s.footprint.device != "none"]
                if not candidates:
                    log.warning("over the model budget (%s): nothing else can be unloaded", self.budget.describe())
                    return
                idle = [s for s in candidates if not s.busy()]
                if idle_only and not idle:
                    return
                victim = min(idle or candidates, key=lambda s: s.last_used)
            self._evict(victim, "budget")

    def _evict(self, slot: _Slot, reason: str, still: Callable[[], bool] | None = None) -> bool:
        """Unload `slot` under its gate: its running requests finish first. Requests that queued meanwhile
        get it loaded again. `still` (checked under the gate) may call it off."""
        with slot.queue.exclusive():
            with self._cond:
                backend = slot.backend
                if backend is None or slot.claim is not None or (still is not None and not still()):
                    return False
                slot.backend, slot.footprint, slot.unloaded_because = None, None, reason
                slot.counts[{"budget": "evictions", "idle": "idle_unloads"}.get(reason, "unloads")] += 1
            try:
                backend.unload()
            except Exception:  # it is out of the manager already; a failing cleanup must not stop the caller
                log.exception("unloading %s failed", slot.name)
        log.info("unloaded %s (%s)", slot.name, {"budget": "to make room", "idle": "idle"}.get(reason, "asked to"))
        with self._cond:
            if slot.queue.waiting():
                self._want(slot)
        return True

    # ---- requests
    def acquire(self, name: str | None, cancel: threading.Event) -> Generator[Wait, None, Lease]:
        """Wait for a slot on the model `name` (None: the default model), loading it first if it is not
        loaded. Yields a `Wait` whenever the position changes; returns the `Lease` (release it when done).
        Raises ModelError when the load fails, ModelBusy when a job that refuses requests holds the model,
        and the queue's own errors (full, cancelled)."""
        slot = self._slot(self.canonical(name))
        claim = slot.claim
        if claim is not None and claim.refuse_requests:
            wait = claim.seconds_left()
            raise ModelBusy(f"{claim.owner} is using {claim.model}; try again in about {wait} s", wait)
        while True:
            with self._cond:
                since = self._want(slot)
            waits = slot.queue.acquire(_Watch(cancel, slot, since))
            entered = False
            try:
                for position in waits:
                    if not entered:  # now in line: a model evicted just before that must still get loaded
                        entered = True
                        with self._cond:
                            if slot.failed_seq < since:  # (not a retry of a load that just failed for us)
                                self._want(slot)
                    yield Wait(position, slot.name if slot.pending is not None else None)
            except Exception:
                if slot.failed_seq >= since and not cancel.is_set():
                    raise ModelError(slot.failure or f"{slot.name} could not be loaded") from None
                raise
            with self._cond:
                backend = slot.backend
                if backend is not None:
                    slot.leases += 1
                    slot.last_used = time.monotonic()
                    return Lease(self, slot, backend)
            slot.queue.release()  # no backend behind an open slot: only if it was unloaded just now

    def _release(self, slot: _Slot) -> None:
        with self._cond:
            slot.leases -= 1
            slot.last_used = time.monotonic()
        slot.queue.release()

    def backend_for(self, name: str | None) -> Backend:
        """The backend for a request's model name, loaded just in time if it is not (blocking). Takes no
        queue slot: for planning a request (tokenizing, context checks) before it queues."""
        slot = self._slot(self.canonical(name))
        while True:
            with self._cond:
                if slot.backend is not None:
                    slot.last_used = time.monotonic()
                    return slot.backend
                self._want(slot)
                job = slot.pending
                slot.planning += 1
            assert job is not None
            try:
                job.done.wait()
            finally:
                with self._cond:
                    slot.planning -= 1
            job.raise_error()

    def needs_load(self, name: str | None) -> bool:
        """Whether a request for `name` would have to wait for a load (False for unknown names). Asks no
        remote engine (the API calls it on its event loop): a `remote:` name counts as loadable here."""
        target = self.aliases.get(name, name) if name else self.default
        if target is None or self.get(target) is not None:
            return False
        if registry.loader_for_name(target) is not None:
            return self.remote_options is not None or target in self._slots
        return target in self.list()

    def check_fits(self, name: str) -> None:
        """Raise ModelTooLarge if `name` cannot fit the budget even alone (before anything is loaded)."""
        if self.get(name) is not None:
            return
        try:
            need = self.need_of(name)
        except (ModelError, OSError):
            return  # the load reports that itself
        problem = self.budget.alone_problem(need)
        if problem:
            raise ModelTooLarge(f"{name} {problem}")

    def need_of(self, name: str) -> Footprint:
        """The footprint `name` will have when it loads (with its remembered or saved options)."""
        slot = self._slots.get(name)
        loader, options = slot.recipe if slot is not None else (None, None)
        return self.plan(name, loader, options if options is not None else self._jit_options(name))[2]

    def context_length_of(self, name: str) -> int | None:
        """The context `name` has, or will have once loaded."""
        backend = self.get(name)
        return backend.context_length if backend is not None else self.planned_context_length(name)

    # ---- by name (start, Model tab, API)
    def load(self, name: str, loader: str | None = None, options: dict[str, Any] | None = None,
             progress: Progress | None = None) -> Backend:
        """Load `name` (again, with these options, if it is loaded) and make it the default model.
        On failure every loaded model stays as it was."""
        slot = self._slot(self._checked(name))
        with self._cond:
            slot.refuse_if_claimed()
            job = self._start(slot, loader, options, progress, make_default=True)
        for fraction, message in iter(job.messages.get, None):
            if progress is not None:
                progress(fraction, message)
        job.done.wait()
        job.raise_error()
        assert job.backend is not None
        return job.backend

    def load_in_background(self, name: str, loader: str | None = None, options: dict[str, Any] | None = None,
                           after: threading.Event | None = None) -> None:
        """Start loading `name` as the default model (server start: the page answers before it is ready;
        requests without a model name wait for it); with `after`, the loading waits for that Event."""
        try:
            slot = self._slot(self._checked(name))
        except ModelError as exc:
            log.error("could not load %s: %s", name, exc)
            self.last_error = str(exc)
            return
        with self._cond:
            self._start(slot, loader, options, make_default=True, default_now=True, after=after)

    def unload(self, name: str | None = None) -> list[str]:
        """Unload `name` (None: every model; the default is then none). Returns the names unloaded.
        Refused (ModelError, nothing unloaded) while a job holds one of them."""
        with self._cond:
            if name is None:
                slots = [s for s in self._slots.values() if s.backend is not None]
            else:
                target = self.aliases.get(name, name)
                slots = [self._slots[target]] if target in self._slots else []
            for slot in slots:
                slot.refuse_if_claimed()
            if name is None or self.default == self.aliases.get(name, name):
                self.default = None
        return [s.name for s in slots if self._evict(s, "unload")]

    def unload_if_idle(self, idle_seconds: float) -> bool:
        """Unload every model nothing used for `idle_seconds`; each reloads on its next request."""
        now = time.monotonic()
        with self._cond:
            stale = [s for s in self._slots.values() if s.backend is not None and s.claim is None
                     and not s.busy() and now - s.last_used >= idle_seconds]
        unloaded = False
        for slot in stale:
            if self._evict(slot, "idle", still=lambda s=slot: not s.leases and time.monotonic() - s.last_used >= idle_seconds):
                log.info("%s was idle for %.0f s", slot.name, idle_seconds)
                unloaded = True
        return unloaded

    @contextlib.contextmanager
    def exclusive(self, name: str | None = None) -> Iterator[Backend | None]:
        """Hold every slot of the model `name` (None: the default one): no request generates on it and it
        is not unloaded meanwhile. For adapter changes, perplexity runs, training. Yields its backend."""
        slot = self._slot(self.canonical(name))
        with self._cond:
            slot.leases += 1  # busy: making room passes it by while others are idle
        try:
            with slot.queue.exclusive():
                yield slot.backend
        finally:
            with self._cond:
                slot.leases -= 1
                slot.last_used = time.monotonic()

    @contextlib.contextmanager
    def claim(self, owner: str, model: str | None = None, refuse_requests: bool = False,
              retry_after: Callable[[], int] = lambda: 60) -> Iterator[Backend]:
        """Hold the loaded model `model` (None: the default one) for a long job (training): wait until no
        request generates on it, then keep its gate for the whole job. Meanwhile it is never evicted,
        its loads, unloads and adapter changes are refused with a ModelError naming `owner`, and its
        requests wait in its queue (or, with `refuse_requests`, get ModelBusy at once: see `acquire`).
        Other models load, unload and answer as usual. One claim per model at a time."""
        try:
            slot = self._slot(self.canonical(model))
        except NoModel as exc:
            raise ModelError("no model is loaded: load one in the Model tab first") from exc
        with self._cond:
            slot.refuse_if_claimed()
            if slot.backend is None:
                raise ModelError(f"{slot.name} is not loaded: load it in the Model tab first")
            slot.claim = Claim(owner, slot.name, refuse_requests, retry_after)
            slot.leases += 1  # busy: never idle, never a candidate to make room
        try:
            with slot.queue.exclusive():
                backend = slot.backend
                if backend is None:  # an eviction that was already under way when the claim began
                    raise ModelError(f"{slot.name} was unloaded meanwhile: load it again")
                yield backend
        finally:
            with self._cond:
                slot.claim = None
                slot.leases -= 1
                slot.last_used = time.monotonic()

    def set_loras(self, names: list[str], model: str | None = None) -> list[str]:
        """Apply exactly these LoRAs from loras/ to a loaded Transformers model (None: the default one;
        [] removes all)."""
        backend = self.get(model)
        if backend is None or not registry.capabilities(backend).lora:
            raise ModelError("LoRAs need a model loaded with a loader that applies them (Transformers)")
        paths = []
        for name in names:
            try:
                path = safe_child(self.loras_dir, name)
            except UnsafeName as exc:
                raise ModelError(f"bad LoRA name: {exc}") from exc
            if not (path / "adapter_config.json").is_file():
                raise ModelError(f"LoRA {name!r} is not in {self.loras_dir}")
            paths.append(path)
        self._slot(backend.name).refuse_if_claimed()
        with self.exclusive(backend.name) as held:
            if held is not backend:
                raise ModelError(f"{backend.name} was unloaded meanwhile")
            try:
                backend.set_loras(paths)
            except (ValueError, OSError, RuntimeError, KeyError) as exc:
                raise ModelError(f"could not apply {', '.join(names)}: {exc}") from exc
        return list(backend.loras)

    def save_settings(self, name: str, loader: str, options: dict[str, Any], preset: str | None = None,
                      template: str | None = None, reasoning_setting: str | dict[str, str] | None = None) -> None:
        super().save_settings(name, loader, options, preset, template, reasoning_setting)
        backend = self.get(name)
        if backend is not None:  # the loaded model follows at once
            template_source = backend.chat_template.source if backend.chat_template else None
            backend.reasoning_format = reasoning.detect(template_source, reasoning_setting)

    def adopt(self, backend: Backend) -> None:
        """Make an already built backend the default model (tests; nothing is loaded or counted)."""
        slot = self._slot(backend.name)
        with self._cond:
            slot.backend, slot.footprint, self.default = backend, Footprint("none", 0.0), backend.name
        slot.queue.wake()

    # ---- status
    def status(self) -> str:
        """One line for the UI: the default model (or why there is none), then the others loaded."""
        with self._cond:
            slot = self._slots.get(self.default) if self.default else None
            others = sorted(n for n, s in self._slots.items() if s.backend is not None and s is not slot)
        also = f" · also loaded: {', '.join(others)}" if others else ""
        if slot is not None and slot.claim is not None:
            claim = slot.claim
            return f"{claim.model}: {claim.owner} (requests wait or are refused until it ends)" + also
        if slot is not None and slot.pending is not None and slot.backend is None:
            return f"Loading {slot.name}…" + also
        if slot is None or slot.backend is None:
            loading = self.loading
            if loading:
                return f"Loading {loading}…" + also
            if slot is not None and slot.unloaded_because in ("idle", "budget"):
                why = "while idle" if slot.unloaded_because == "idle" else "to make room for another model"
                return f"{slot.name} unloaded {why}; it reloads on the next request" + also
            if others:
                return f"No default model; loaded: {', '.join(others)}"
            return "No model loaded" + (f" — last error: {self.last_error}" if self.last_error else "")
        return describe_backend(slot.backend) + also

    def info(self, name: str | None = None) -> dict[str, Any] | None:
        backend = self.get(name)
        return backend.info() if backend is not None else None

    def loaded(self) -> list[dict[str, Any]]:
        """The loaded models (and those loading), most recently used first: for the Model tab's table."""
        with self._cond:
            slots = [s for s in self._slots.values() if s.backend is not None or s.pending is not None]
            rows = [{"name": s.name, "state": s.state(), "default": s.name == self.default,
                     "loader": getattr(s.backend, "loader", ""), "device": s.footprint.device if s.footprint else "",
                     "memory_mib": round(s.footprint.mib, 1) if s.footprint else None, "running": s.leases,
                     "waiting": s.waiting(), "last_used": s.last_used} for s in slots]
        return sorted(rows, key=lambda r: -r["last_used"])

    def catalog(self, loaded_only: bool = False) -> list[dict[str, Any]]:
        """Every model a request may name: models/, loaded ones from elsewhere, the remote engine's (with
        --remote-url), then the aliases. Each: name, state (loaded, loading, available), context length."""
        names = self.choices()
        if self.remote_options is not None and not loaded_only:
            try:
                names += [n for n in self.remote_models(self.remote_options) if n not in names]
            except ModelError as exc:
                log.warning("not listing the remote engine's models: %s", exc)
        with self._cond:
            state = {n: s.state() for n, s in self._slots.items()}
        entries = [{"name": n, "state": state.get(n, "available"), "context_length": self.context_length_of(n)}
                   for n in names]
        entries += [{**next(e for e in entries if e["name"] == target), "name": alias, "alias_of": target}
                    for alias, target in sorted(self.aliases.items()) if any(e["name"] == target for e in entries)]
        return [e for e in entries if not loaded_only or e["state"] == "loaded"]

    def states(self) -> dict[str, dict[str, Any]]:
        """Every model this manager has seen (loaded, loading, unloaded, failed): state, queue and counts.
        Tests and operators read this (GET /v1/internal/models) instead of guessing."""
        with self._cond:
            return {name: {"state": s.state(), "default": name == self.default, "running": s.leases,
                           "waiting": s.waiting(), "memory_mib": round(s.footprint.mib, 1) if s.footprint else None,
                           "device": s.footprint.device if s.footprint else None, "last_error": s.failure,
                           "claimed_by": s.claim.owner if s.claim is not None else None,
                           "unloaded_because": s.unloaded_because if s.backend is None else None,
                           **{k: s.counts[k] for k in ("loads", "evictions", "idle_unloads", "unloads", "failures")}}
                    for name, s in self._slots.items()}

    def totals(self) -> dict[str, int]:
        """Counts over every model (for /health)."""
        with self._cond:
            total: collections.Counter[str] = collections.Counter()
            for s in self._slots.values():
                total.update(s.counts)
            return {"loaded_models": sum(1 for s in self._slots.values() if s.backend is not None),
                    "loads": total["loads"], "evictions": total["evictions"], "load_failures": total["failures"]}

    def waiting(self) -> int:
        """Requests waiting for any model."""
        with self._cond:
            return sum(s.waiting() for s in self._slots.values())


def describe_backend(backend: Backend) -> str:
    """One line about a loaded model: name, loader, architecture, size, dtype, device, context."""
    info = backend.info()
    params = f", {info['parameters'] / 1e6:.1f}M params" if info.get("parameters") else ""
    return (f"{info['name']} ({info['loader']}, {info.get('architecture', '?')}{params}, "
            f"{info.get('dtype', '?')}, {info.get('device', '?')}, context {info['context_length']})")
