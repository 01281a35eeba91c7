"""The pipeline on real (micro) Transformers models."""

import threading

import pytest
import torch

from modules.generation import GenerationRequest, NoModel
from modules.presets import Preset

GREEDY = Preset(temperature=0.0, max_new_tokens=40, ban_eos_token=True)


def collect(app, request):
    return list(app.pipeline.stream(request))


@pytest.mark.parametrize("model", ["parlour-micro", "parlour-micro-gpt2"])
def test_greedy_pipeline_equals_model_generate(make_app, model):
    app = make_app()
    backend = app.models.load(model)
    messages = [{"role": "user", "content": "Hello there"}]
    updates = collect(app, GenerationRequest(preset=GREEDY, messages=messages))
    prompt = backend.chat_template.render(messages, add_generation_prompt=True)
    ids = torch.tensor([backend.tokenize(prompt)])
    eos = list(backend.eos_token_ids)
    with torch.inference_mode():
        raw = backend.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=40,
                                     suppress_tokens=eos, eos_token_id=eos, pad_token_id=eos[0])
    expected = backend.detokenize(raw[0, ids.shape[1]:].tolist())
    assert updates[-1].text == expected
    assert updates[-1].tokens == 40 and updates[-1].finish_reason == "length"
    assert updates[-1].prompt_tokens == ids.shape[1]


def test_notebook_prompt_is_raw_text(make_app):
    app = make_app()
    backend = app.models.load("parlour-micro")
    update = collect(app, GenerationRequest(preset=GREEDY, prompt="def main():"))[-1]
    assert update.prompt_tokens == len(backend.tokenize("def main():"))
    assert update.tokens == 40


def test_same_seed_same_text_and_different_seed_differs(make_app):
    app = make_app()
    app.models.load("parlour-micro")
    sampled = Preset(temperature=1.5, max_new_tokens=30, ban_eos_token=True, seed=1234)
    first = collect(app, GenerationRequest(preset=sampled, prompt="import"))[-1].text
    again = collect(app, GenerationRequest(preset=sampled, prompt="import"))[-1].text
    other = collect(app, GenerationRequest(preset=sampled.model_copy(update={"seed": 99}), prompt="import"))[-1].text
    assert first == again
    assert first != other


def test_cancel_stops_within_one_token_and_ends_the_worker(make_app):
    app = make_app()
    app.models.load("parlour-micro")
    cancel = threading.Event()
    request = GenerationRequest(preset=Preset(max_new_tokens=1500, ban_eos_token=True), prompt="x", cancel=cancel)
    stream = app.pipeline.stream(request)
    seen = 0
    for update in stream:
        seen = update.tokens
        if update.tokens >= 5:
            cancel.set()
        if update.finish_reason:
            break
    assert update.finish_reason == "cancelled"
    assert seen <= 7  # the token in flight when Stop was pressed may still arrive, no more
    assert app.pipeline.stats.snapshot()["active"] == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("generate-")]


def test_closing_the_reader_ends_the_worker(make_app):
    app = make_app()
    app.models.load("parlour-micro")
    stream = app.pipeline.stream(GenerationRequest(preset=Preset(max_new_tokens=1500, ban_eos_token=True),
                                                   prompt="x"))
    for update in stream:
        if update.tokens >= 3:
            break
    stream.close()  # what Gradio does when the Stop button cancels the event
    assert app.pipeline.stats.snapshot()["active"] == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("generate-")]
    # and the queue is free for the next request at once
    assert collect(app, GenerationRequest(preset=GREEDY, prompt="y"))[-1].tokens == 40


def test_custom_stop_string_cuts_the_reply(make_app):
    app = make_app()
    app.models.load("parlour-micro")
    full = collect(app, GenerationRequest(preset=GREEDY, prompt="abc"))[-1].text
    stop = full[5:8]
    assert stop.strip(), "the micro model's output should have text to stop on"
    cut = collect(app, GenerationRequest(preset=GREEDY, prompt="abc", stop=(stop,)))[-1]
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def test_continue_extends_the_last_reply(make_app):
    app = make_app()
    backend = app.models.load("parlour-micro")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}]
    request = GenerationRequest(preset=GREEDY, messages=messages, continue_last=True)
    prompt = app.pipeline.build_prompt(backend, request)
    assert prompt.endswith("<|im_start|>assistant\nHello")


def test_no_model_is_a_clear_error(make_app):
    app = make_app()
    with pytest.raises(NoModel, match="Model tab"):
        collect(app, GenerationRequest(preset=GREEDY, prompt="x"))
    assert app.models.waiting() == 0


def test_out_of_memory_mid_generation_is_reported_and_the_app_stays_usable(make_app, monkeypatch):
    from modules.generation import GenerationError

    app = make_app()
    backend = app.models.load("parlour-micro")
    real_forward = backend.model.forward
    calls = {"n": 0}

    def failing_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # a few tokens in, as a real OOM on a long reply would
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(backend.model, "forward", failing_forward)
    with pytest.raises(GenerationError, match="out of memory"):
        collect(app, GenerationRequest(preset=GREEDY, prompt="x"))
    assert app.pipeline.stats.snapshot()["active"] == 0 and app.models.waiting() == 0
    monkeypatch.setattr(backend.model, "forward", real_forward)
    assert collect(app, GenerationRequest(preset=GREEDY, prompt="x"))[-1].tokens == 40
