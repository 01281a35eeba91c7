"""The model budget and the ModelManager's rules for several models, with stand-in backends so each
rule can be held in place: one load for many requests, failures reach every waiter, LRU eviction of
idle models only, never an unload under a running request, memory budgets, aliases.
(The same rules against real models and a real server: tests/integration/test_multimodel.py.)"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from modules.budget import Budget, Footprint, estimate, parse_size
from modules.generation import NoModel
from modules.loaders.options import TransformersOptions
from modules.models import ModelError, ModelManager, ModelNotFound, ModelTooLarge
from modules.settings import CpuThreads


def until(predicate, timeout: float = 30.0) -> None:
    """Wait for a state of the manager (not for time to pass)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the state never came"
        time.sleep(0.005)


# -- the budget -------------------------------------------------------------------------------------
def test_sizes_parse_in_mib():
    assert parse_size("20GiB") == 20480 and parse_size("512 MiB") == 512
    assert parse_size("1GB") == pytest.approx(953.67, rel=1e-3)
    with pytest.raises(ValueError, match="not a size"):
        parse_size("20 gigs")


def test_budget_counts_local_models_and_memory_per_device():
    budget = Budget(max_models=2, gpu_mib=1000, cpu_mib=None)
    gpu, cpu, remote = Footprint("gpu", 600), Footprint("cpu", 5000), Footprint("none", 0)
    assert budget.fits([gpu, cpu]) and budget.fits([gpu, cpu, remote])  # remote models do not count
    assert not budget.fits([gpu, cpu], Footprint("cpu", 1))  # a third local model
    assert budget.fits([gpu], Footprint("cpu", 1), count=False)
    assert not budget.fits([gpu], Footprint("gpu", 500), count=False)  # 1100 MiB of GPU memory
    assert budget.alone_problem(Footprint("gpu", 1200)) == ("needs about 1,200 MiB of GPU memory; "
                                                            "--gpu-memory-budget is 1,000 MiB")
    assert budget.alone_problem(Footprint("cpu", 10**6)) is None  # no CPU budget


def fake_model(root: Path, name: str, mib: float, dtype: str = "float32") -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "dtype": dtype}))
    (folder / "model.safetensors").write_bytes(b"\0" * int(mib * 2**20))
    return folder


def test_estimates_follow_dtype_quantization_and_device(tmp_path):
    folder = fake_model(tmp_path, "m", 2, dtype="float16")
    assert estimate(folder, "transformers", TransformersOptions(), gpu_available=False) == Footprint("cpu", 4)
    assert estimate(folder, "transformers", TransformersOptions(), gpu_available=True) == Footprint("gpu", 2)
    assert estimate(folder, "transformers", TransformersOptions(load_in_4bit=True), True) == Footprint("gpu", 0.5)
    assert estimate(folder, "transformers", TransformersOptions(device_map="cpu", dtype="bfloat16"), True) == \
        Footprint("cpu", 2)
    assert estimate(None, "remote", None, True) == Footprint("none", 0)


# -- the manager, with stand-in backends ------------------------------------------------------------
class FakeBackend:
    loader = "transformers"
    max_concurrency = 4
    context_length = 64

    def __init__(self, name: str, mib: float) -> None:
        self.name, self.mib, self.unloaded = name, mib, False

    def info(self) -> dict:
        return {"loader": self.loader, "name": self.name, "device": "cpu", "context_length": 64,
                "memory": {"weights_mib": self.mib}}

    def unload(self) -> None:
        self.unloaded = True


class Manager(ModelManager):
    """Builds stand-ins; a build can be held (`hold[name]` is an Event the build waits for) or fail."""

    def __init__(self, models_dir: Path, **kwargs) -> None:
        super().__init__(models_dir, models_dir / "loras", models_dir / "offload", threads=CpuThreads(1, 1),
                         gpu_available=False, **kwargs)
        self.builds: list[str] = []
        self.hold: dict[str, threading.Event] = {}
        self.entered: dict[str, threading.Event] = {}
        self.fail: dict[str, str] = {}

    def _build(self, name, loader, options):
        self.builds.append(name)
        self.entered.setdefault(name, threading.Event()).set()
        if name in self.hold:
            self.hold[name].wait()
        if name in self.fail:
            raise ModelError(self.fail[name])
        return FakeBackend(name, (self.models_dir / name / "model.safetensors").stat().st_size / 2**20)


@pytest.fixture()
def folder(tmp_path):
    for name in ("a", "b", "c"):
        fake_model(tmp_path, name, 1)
    return tmp_path


def lease(manager: Manager, name: str | None):
    """Acquire a slot on `name` the way the pipeline does (its waits ignored)."""
    waits = manager.acquire(name, threading.Event())
    while True:
        try:
            next(waits)
        except StopIteration as done:
            return done.value


def in_thread(fn, *args) -> dict:
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn(*args)
        except Exception as exc:  # handed to the test
            out["error"] = exc

    out["thread"] = threading.Thread(target=run, daemon=True)
    out["thread"].start()
    return out


def test_requests_for_an_unloaded_model_share_one_load(folder):
    manager = Manager(folder, max_waiting=8)
    manager.hold["a"] = threading.Event()
    waiters = [in_thread(lease, manager, "a") for _ in range(3)]
    until(lambda: manager.states().get("a", {}).get("waiting") == 3)
    assert manager.states()["a"]["state"] == "loading"
    manager.hold["a"].set()
    for waiter in waiters:
        waiter["thread"].join()
        waiter["value"].release()
    assert manager.builds == ["a"] and manager.states()["a"]["loads"] == 1


def test_a_failed_load_answers_every_waiter_and_touches_nothing_else(folder):
    manager = Manager(folder, budget=Budget(max_models=2))
    manager.load("b")
    manager.hold["a"], manager.fail["a"] = threading.Event(), "a: the weights are truncated"
    waiters = [in_thread(lease, manager, "a") for _ in range(2)] + [in_thread(manager.backend_for, "a")]
    until(lambda: manager.states().get("a", {}).get("waiting") == 3)
    manager.hold["a"].set()
    for waiter in waiters:
        waiter["thread"].join()
        assert str(waiter["error"]) == "a: the weights are truncated"
    assert manager.builds == ["b", "a"]  # one attempt, for all three
    assert manager.get("b") is not None and manager.current().name == "b"
    assert manager.states()["a"]["failures"] == 1 and manager.states()["b"]["evictions"] == 0


def test_the_least_recently_used_idle_model_makes_room(folder):
    manager = Manager(folder, budget=Budget(max_models=2))
    manager.load("a")
    manager.load("b")
    lease(manager, "a").release()  # a is now more recently used than b
    manager.load("c")
    assert {n for n, s in manager.states().items() if s["state"] == "loaded"} == {"a", "c"}
    assert manager.states()["b"]["evictions"] == 1


def test_no_model_is_unloaded_under_a_running_request(folder):
    manager = Manager(folder, budget=Budget(max_models=1))
    manager.load("a")
    running = lease(manager, "a")
    other = lease(manager, "b")  # b loads beside a and answers at once; a is drained, not cut off
    assert other.backend.name == "b"
    until(lambda: manager.states()["a"]["waiting"] == 1)  # the eviction waits behind the running request
    assert manager.get("a") is running.backend and not running.backend.unloaded
    running.release()
    until(lambda: manager.states()["a"]["state"] == "available")
    assert running.backend.unloaded and manager.states()["a"]["evictions"] == 1
    other.release()


def test_requests_queued_behind_an_eviction_load_the_model_again(folder):
    manager = Manager(folder, budget=Budget(max_models=1))
    manager.load("a")
    running = lease(manager, "a")
    other = lease(manager, "b")
    until(lambda: manager.states()["a"]["waiting"] == 1)  # the eviction is in a's queue
    again = in_thread(lease, manager, "a")
    until(lambda: manager.states()["a"]["waiting"] == 2)
    running.release()
    other.release()
    again["thread"].join()
    assert again["value"].backend.name == "a" and again["value"].backend is not running.backend
    assert manager.states()["a"]["loads"] == 2
    again["value"].release()


def test_memory_budget_makes_room_first_and_refuses_what_never_fits(folder):
    fake_model(folder, "huge", 12)
    manager = Manager(folder, budget=Budget(max_models=5, cpu_mib=2.5))
    manager.load("a")
    manager.load("b")  # 1 + 1 MiB: both fit
    manager.load("c")  # a third MiB does not: a (least recently used) goes before c loads
    assert manager.get("a") is None and manager.get("b") is not None and manager.get("c") is not None
    with pytest.raises(ModelTooLarge, match=r"huge needs about 12 MiB of CPU memory; --cpu-memory-budget is 2.5 MiB"):
        manager.check_fits("huge")
    with pytest.raises(ModelTooLarge, match="--cpu-memory-budget"):
        manager.load("huge")
    assert "huge" not in manager.builds and manager.get("b") is not None and manager.get("c") is not None


def test_idle_unload_spares_a_model_in_use(folder):
    manager = Manager(folder, budget=Budget(max_models=2))
    manager.load("a")
    manager.load("b")
    held = lease(manager, "a")
    assert manager.unload_if_idle(0.0)
    assert manager.get("a") is not None and manager.get("b") is None
    assert manager.states()["b"]["idle_unloads"] == 1
    held.release()
    assert lease(manager, "b").backend.name == "b"  # it reloads on its next request


def test_names_aliases_and_the_default(folder):
    manager = Manager(folder, aliases={"gpt-4o-mini": "b", "ghost": "nowhere"})
    with pytest.raises(NoModel):
        manager.canonical(None)
    assert manager.canonical("gpt-4o-mini") == "b" and manager.canonical("a") == "a"
    with pytest.raises(ModelNotFound, match="'gpt-5' does not exist"):
        manager.canonical("gpt-5")
    with pytest.raises(ModelNotFound, match="alias of 'nowhere'"):
        manager.canonical("ghost")
    held = lease(manager, "gpt-4o-mini")
    assert held.backend.name == "b"
    held.release()
    assert manager.default is None  # a just-in-time load does not change the default model
    manager.load("a")  # one model at a time: b goes
    assert manager.canonical(None) == "a" and manager.get("b") is None
    assert manager.unload() == ["a"] and manager.default is None


def test_a_request_waiting_for_its_model_says_which_and_where(folder):
    from modules.generation import GenerationRequest, Pipeline
    from modules.presets import Preset
    from modules.ui.chat import status_line

    manager = Manager(folder)
    manager.hold["a"] = threading.Event()
    updates = Pipeline(manager).stream(GenerationRequest(preset=Preset(), prompt="x", model="a"))
    first = next(updates)
    assert (first.queue_position, first.loading) == (1, "a")
    assert status_line(first) == "Waiting for the model… Loading a: position 1 in its queue."
    updates.close()  # the reader left: it left the queue too
    until(lambda: manager.states()["a"]["waiting"] == 0)
    manager.hold["a"].set()
