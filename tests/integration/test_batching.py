"""Batched generation (modules/batching.py) on the real micro models: batched replies equal unbatched ones."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from modules.generation import GenerationRequest
from modules.presets import Preset

PROMPTS = ["def main():", "class Foo", "import os\nimport", "while True:\n    x", "for i in range(10)", "a"]


def run(app, prompt: str, preset: Preset, cancel: threading.Event | None = None):
    request = GenerationRequest(preset=preset, prompt=prompt, cancel=cancel or threading.Event())
    return list(app.pipeline.stream(request))[-1]


@pytest.fixture(scope="module", params=["parlour-micro", "parlour-micro-gpt2"])
def apps(request, models_dir, tmp_path_factory):
    """The same model loaded twice: one at a time, and batching up to 4 requests."""
    from modules.app import App
    from modules.settings import Settings
    from tests.conftest import ROOT

    built = []
    for batch in (1, 4):
        tmp = tmp_path_factory.mktemp(f"batch{batch}")
        app = App.build(Settings(models_dir=models_dir, user_data=tmp, presets_dir=ROOT / "presets",
                                 settings=tmp / "s.yaml", batch_size=batch))
        app.models.load(request.param)
        built.append(app)
    yield built
    for app in built:
        app.models.unload()


def test_batched_greedy_equals_unbatched(apps):
    single, batched = apps
    assert batched.models.current().max_concurrency == 4 and single.models.current().max_concurrency == 1
    preset = Preset(temperature=0.0, max_new_tokens=24, ban_eos_token=True)
    alone = {p: run(single, p, preset) for p in PROMPTS}
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = dict(zip(PROMPTS, pool.map(lambda p: run(batched, p, preset), PROMPTS)))
    for prompt in PROMPTS:
        assert together[prompt].text == alone[prompt].text, prompt
        assert together[prompt].tokens == 24 and together[prompt].finish_reason == "length"
    assert batched.pipeline.stats.snapshot()["active"] == 0
    assert batched.models.current().engine.largest_batch >= 2  # they really shared forward passes


def test_batch_of_one_equals_generate_and_different_lengths_finish_on_their_own(apps):
    single, batched = apps
    greedy = Preset(temperature=0.0, max_new_tokens=30, ban_eos_token=True)
    assert run(batched, "x = 1", greedy).text == run(single, "x = 1", greedy).text
    lengths = [3, 17, 30, 9]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        finals = list(pool.map(lambda n: run(batched, "print(", greedy.model_copy(update={"max_new_tokens": n})),
                               lengths))
    assert [f.tokens for f in finals] == lengths
    full = run(single, "print(", greedy).text
    assert all(full.startswith(f.text) for f in finals)


def test_seeded_sampling_does_not_depend_on_the_batch(apps):
    _, batched = apps
    sampled = Preset(temperature=1.5, max_new_tokens=20, ban_eos_token=True, seed=42)
    alone = run(batched, "import", sampled).text
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda p: run(batched, p, sampled).text, ["import", "def", "class", "import"]))
    assert texts[0] == texts[3] == alone


def test_cancelling_one_row_leaves_the_others_running(apps):
    single, batched = apps
    long = Preset(temperature=0.0, max_new_tokens=1500, ban_eos_token=True)
    short = Preset(temperature=0.0, max_new_tokens=40, ban_eos_token=True)
    cancel = threading.Event()
    stream = batched.pipeline.stream(GenerationRequest(preset=long, prompt="x", cancel=cancel))
    first = next(u for u in stream if u.tokens)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        other = pool.submit(run, batched, "def", short)
        cancel.set()
        rest = list(stream)
        assert rest[-1].finish_reason == "cancelled" and rest[-1].tokens < 1500
        assert other.result().text == run(single, "def", short).text
    assert first.tokens >= 1


def test_prefill_uses_the_prompt_threads_and_steps_the_generate_threads(micro_backend):
    """torch's thread count is process-wide: the engine raises it for each prefill and drops it back."""
    import torch

    from modules.batching import BatchEngine
    from modules.loaders.base import END
    from modules.settings import CpuThreads

    seen: list[tuple[int, int]] = []  # (tokens in the forward pass, torch threads at the time)
    model = micro_backend.model

    def recording(**kwargs):
        seen.append((kwargs["input_ids"].shape[1], torch.get_num_threads()))
        return model(**kwargs)

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = BatchEngine(recording, micro_backend.eos_token_ids, 0, max_batch=2, threads=CpuThreads(generate=1, prompt=2))
    try:
        out = engine.submit(micro_backend.tokenize("def main():"), Preset(temperature=0, max_new_tokens=5,
                                                                          ban_eos_token=True), 5, threading.Event())
        tokens = [item for item in iter(out.get, END)]
    finally:
        engine.close()
        torch.set_num_threads(before)
    assert len(tokens) == 5
    prefills = [threads for length, threads in seen if length > 1]
    steps = [threads for length, threads in seen if length == 1]
    assert prefills == [2] and steps == [1] * 4


def test_engine_tunes_generating_threads_on_its_own_steps(micro_backend):
    """With `tune`, decode steps alternate between one thread fewer and the full count, then keep one."""
    import torch

    from modules.batching import BatchEngine, ThreadTuner
    from modules.loaders.base import END
    from modules.settings import CpuThreads

    seen: list[int] = []  # torch threads at each one-token (decode) forward pass
    model = micro_backend.model

    def recording(**kwargs):
        if kwargs["input_ids"].shape[1] == 1:
            seen.append(torch.get_num_threads())
        return model(**kwargs)

    before = torch.get_num_threads()
    engine = BatchEngine(recording, micro_backend.eos_token_ids, 0, max_batch=2,
                         threads=CpuThreads(generate=2, prompt=2, tune=True))
    steps = ThreadTuner.BLOCK * ThreadTuner.ROUNDS * 2 + 10
    try:
        assert engine.generate_threads() is None  # still measuring
        out = engine.submit(micro_backend.tokenize("def main():"),
                            Preset(temperature=0, max_new_tokens=steps + 1, ban_eos_token=True), steps + 1,
                            threading.Event())
        assert len(list(iter(out.get, END))) == steps + 1
        chosen = engine.generate_threads()
    finally:
        engine.close()
        torch.set_num_threads(before)
    block = ThreadTuner.BLOCK
    assert seen[:2 * block] == [1] * block + [2] * block
    assert chosen in (1, 2) and seen[-5:] == [chosen] * 5



def test_rows_joining_a_running_batch_say_what_they_say_alone_and_nobody_is_read_twice(micro_backend, monkeypatch):
    """Newcomers are read on their own (in chunks, between the running rows' steps) and merged into the
    batch: every prompt token goes through the model exactly once, and each reply equals its solo one."""
    import modules.batching as batching
    from modules.batching import BatchEngine
    from modules.loaders.base import END

    monkeypatch.setattr(batching, "PROMPT_CHUNK", 5)  # several chunks per prompt, interleaved with steps
    calls: list[tuple[int, int]] = []  # (rows, tokens) of each forward pass
    model = micro_backend.model

    submitted = threading.Event()

    def recording(**kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        if len(calls) == 2:  # the first row's first decode step waits until the others are queued
            submitted.wait()
        return model(**kwargs)

    greedy = Preset(temperature=0.0, max_new_tokens=30, ban_eos_token=True)
    prompts = ["x = 1", "def main():\n    return compute(1, 2, 3) + other", "for i in range(10):", "a"]
    alone = ["".join(d.text for d in micro_backend.stream(p, greedy, threading.Event())) for p in prompts]
    engine = BatchEngine(recording, micro_backend.eos_token_ids, 0, max_batch=4)
    try:
        first = engine.submit(micro_backend.tokenize(prompts[0]), greedy, 30, threading.Event())
        head = first.get()  # the first row is generating: the others join a running batch
        queues = [engine.submit(micro_backend.tokenize(p), greedy, 30, threading.Event()) for p in prompts[1:]]
        submitted.set()
        texts = [micro_backend.detokenize(head + [t for item in iter(first.get, END) for t in item])]
        texts += [micro_backend.detokenize([t for item in iter(q.get, END) for t in item]) for q in queues]
    finally:
        engine.close()
    assert texts == alone
    assert engine.largest_batch == 4
    # every prompt token read once, and each decode step feeds each row its last token only
    prompt_tokens = sum(len(micro_backend.tokenize(p)) for p in prompts)
    assert engine.prompt_tokens_read == prompt_tokens
    assert sum(rows * tokens for rows, tokens in calls) == prompt_tokens + len(prompts) * 29
    assert all(rows == 1 or tokens == 1 for rows, tokens in calls)  # prompts are read one row at a time
