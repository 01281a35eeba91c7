"""The sampler chain and the inspect views on the real micro Transformers model."""

import pytest
import torch

from modules.generation import GenerationRequest
from modules.inspect_logits import candidates_table, chain_bars, coloured_tokens, inspect_next_token, score_text
from modules.presets import Preset

TEXT = "def main():\n    return"


def raw_logits(backend, text):
    ids = torch.tensor([backend.tokenize(text)], device=backend.model.device)
    with torch.inference_mode():
        return backend.model(input_ids=ids).logits[0, -1].float().cpu()


def test_next_token_view_matches_the_model_and_the_chain(micro_backend):
    preset = Preset(temperature=0.5, top_k=5)
    view = inspect_next_token(micro_backend, TEXT, preset)
    logits = raw_logits(micro_backend, TEXT)
    model_probs = logits.softmax(-1)
    assert [s.name for s in view.stages] == ["model", "temperature", "top_k"]
    assert len(view.before.top) == 50
    assert view.before.top[0].token_id == int(logits.argmax())
    assert view.before.top[0].prob == pytest.approx(float(model_probs.max()), rel=1e-5)
    # after: softmax(logits / 0.5) restricted to the top 5 and renormalised
    sharp = (logits / 0.5).softmax(-1)
    top5 = sharp.topk(5)
    expected = (top5.values / top5.values.sum()).tolist()
    assert view.after.survivors == 5
    assert [c.token_id for c in view.after.top] == top5.indices.tolist()
    assert [c.prob for c in view.after.top] == pytest.approx(expected, rel=1e-4)
    html = candidates_table(view) + chain_bars(view)
    assert html.count("<tr") == 51 and html.count("class='chain-stage'") == 3


def test_greedy_view_agrees_with_greedy_generation(make_app):
    app = make_app()
    backend = app.models.load("parlour-micro")
    preset = Preset(temperature=0.0, max_new_tokens=1, ban_eos_token=True)
    view = inspect_next_token(backend, TEXT, preset)
    assert view.after.survivors == 1
    reply = list(app.pipeline.stream(GenerationRequest(preset=preset, prompt=TEXT)))[-1].text
    assert reply == backend.detokenize([view.after.top[0].token_id])


def test_guidance_stage_mixes_in_the_negative_prompt(micro_backend):
    preset = Preset(guidance_scale=1.5, negative_prompt="import os")
    view = inspect_next_token(micro_backend, TEXT, preset, top=5)
    assert view.stages[1].name == "guidance_scale"
    cond = raw_logits(micro_backend, TEXT).log_softmax(-1)
    uncond = raw_logits(micro_backend, "import os").log_softmax(-1)
    expected = (1.5 * (cond - uncond) + uncond).softmax(-1)
    got = {c.token_id: c.prob for c in view.stages[1].top}
    top = expected.topk(5)
    assert list(got) == top.indices.tolist()
    assert list(got.values()) == pytest.approx(top.values.tolist(), rel=1e-4)


def test_every_sampler_together_is_reproducible_with_a_seed(make_app):
    app = make_app()
    app.models.load("parlour-micro")
    busy = Preset(temperature=1.3, dynamic_temperature=True, dynatemp_low=0.8, dynatemp_high=1.5,
                  smoothing_factor=0.2, top_k=200, top_p=0.98, min_p=0.01, typical_p=0.99, tfs=0.99, top_a=0.01,
                  top_n_sigma=5.0, epsilon_cutoff=0.5, eta_cutoff=0.5, xtc_probability=0.5, xtc_threshold=0.05,
                  dry_multiplier=0.8, repetition_penalty=1.1, frequency_penalty=0.1, presence_penalty=0.1,
                  encoder_repetition_penalty=1.05, no_repeat_ngram_size=4, mirostat_mode=2, mirostat_tau=8.0,
                  logit_bias={5: 1.0}, custom_token_bans=[6], banned_strings=["import"], max_new_tokens=25,
                  ban_eos_token=True, seed=42)

    def text(preset):
        return list(app.pipeline.stream(GenerationRequest(preset=preset, prompt=TEXT)))[-1]

    first, again = text(busy), text(busy)
    other = text(busy.model_copy(update={"seed": 7}))
    assert first.tokens == 25 and first.text == again.text
    assert other.text != first.text


def test_custom_stopping_strings_end_the_reply(make_app):
    app = make_app()
    app.models.load("parlour-micro")
    greedy = Preset(temperature=0.0, max_new_tokens=30, ban_eos_token=True)
    full = list(app.pipeline.stream(GenerationRequest(preset=greedy, prompt=TEXT)))[-1].text
    stop = full[8:11]
    assert len(stop) == 3
    cut = list(app.pipeline.stream(GenerationRequest(
        preset=greedy.model_copy(update={"custom_stopping_strings": [stop]}), prompt=TEXT)))[-1]
    assert cut.text == full[:full.index(stop)] and cut.finish_reason == "stop"


def test_bos_and_truncation(micro_backend):
    bos = micro_backend.tokenizer.bos_token_id
    ids = micro_backend.tokenize("hello world")
    # this tokenizer adds no BOS of its own, so add_bos_token leaves the prompt alone ...
    assert micro_backend.prompt_ids("hello world", Preset()) == ids
    # ... and turning it off removes one the text starts with
    with_bos = micro_backend.tokenizer.bos_token + "hello world"
    assert micro_backend.prompt_ids(with_bos, Preset())[0] == bos
    assert micro_backend.prompt_ids(with_bos, Preset(add_bos_token=False)) == ids
    long = " ".join(f"word{i}" for i in range(200))
    cut = micro_backend.prompt_ids(long, Preset(truncation_length=40, max_new_tokens=10))
    assert cut == micro_backend.tokenize(long)[-30:]


def test_score_text_gives_each_token_its_probability_and_rank(micro_backend):
    prompt, reply = "def main():", "\n    return 0"
    scored = score_text(micro_backend, prompt, reply)
    head, tail = micro_backend.tokenize(prompt), micro_backend.tokenize(reply)
    logprobs = micro_backend.token_logprobs(head + tail)
    assert len(scored) == len(tail)
    for k, (tok, token_id) in enumerate(zip(scored, tail)):
        row = logprobs[len(head) + k - 1]
        assert tok.prob == pytest.approx(float(row[token_id].exp()), rel=1e-5)
        assert tok.rank == int((row > row[token_id]).sum()) + 1
    assert coloured_tokens(scored).count("class='prob-token'") == len(tail)
    alone = score_text(micro_backend, "", reply)  # no prompt: the first token is shown unscored
    assert "".join(t.text for t in alone) == reply and alone[0].prob is None


def test_model_text_is_escaped_in_the_views():
    from modules.inspect_logits import Candidate, Inspection, StageView

    evil = Inspection(1, [StageView("model", [Candidate(1, "<script>x</script>", 1.0)], 1)])
    assert "<script>" not in candidates_table(evil) + chain_bars(evil)


def test_views_take_the_end_of_a_text_longer_than_the_context(micro_backend):
    long = " ".join(f"word{i}" for i in range(2000))
    assert len(micro_backend.tokenize(long)) > micro_backend.context_length
    view = inspect_next_token(micro_backend, long, Preset(min_p=0.1))
    assert view.prompt_tokens == micro_backend.context_length
    scored = score_text(micro_backend, "", long)
    assert len(scored) == micro_backend.context_length
    assert scored[0].prob is None and all(t.prob is not None for t in scored[1:])  # the first has no context


def test_the_models_own_generation_config_adds_no_samplers(tmp_path, micro_path):
    import json
    import shutil
    import threading

    from modules.loaders.transformers import TransformersBackend

    folder = tmp_path / "opinionated"
    shutil.copytree(micro_path, folder)
    config = json.loads((folder / "generation_config.json").read_text()) if (
        folder / "generation_config.json").exists() else {}
    config.update(top_k=1, temperature=0.01, do_sample=True)  # alone, these would make every reply greedy
    (folder / "generation_config.json").write_text(json.dumps(config))
    backend = TransformersBackend(folder)
    def reply(preset):
        return "".join(d.text for d in backend.stream(TEXT, preset, threading.Event()))

    greedy = reply(Preset(temperature=0.0, max_new_tokens=20, ban_eos_token=True))
    sampled = [reply(Preset(temperature=2.0, max_new_tokens=20, ban_eos_token=True, seed=s)) for s in (1, 2)]
    assert greedy not in sampled and sampled[0] != sampled[1]
