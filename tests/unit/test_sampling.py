"""Every sampler against a distribution worked out by hand, plus the chain's order and edge cases."""

import doctest
import math

import pytest
import torch

import modules.sampling as sampling
from modules.presets import DEFAULT_PRIORITY, Preset
from modules.sampling import (
    ChainContext,
    DRYProcessor,
    MirostatV2Warper,
    XTCWarper,
    build_chain,
    build_processors,
    priority,
)

P3 = [0.5, 0.3, 0.2]


def logits(probs):
    return torch.tensor([probs]).log()


def run(preset, scores, input_ids=None, ctx=None):
    ids = torch.tensor([[0]]) if input_ids is None else torch.tensor([input_ids])
    out = scores
    for _, processor in build_chain(preset, ctx):
        out = processor(ids, out)
    return out


def kept(preset, probs, **kw):
    out = run(preset, logits(probs), **kw)
    return torch.isfinite(out[0]).nonzero().flatten().tolist()


def probs_of(out):
    return out.softmax(-1)[0].tolist()


def test_docstring_examples_hold():
    assert doctest.testmod(sampling).failed == 0


def test_neutral_preset_builds_an_empty_chain():
    assert build_chain(Preset()) == []


def test_temperature_divides_the_logits():
    out = run(Preset(temperature=2.0), torch.tensor([[2.0, 0.0]]))
    assert out.tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize("preset", [Preset(temperature=0.0), Preset(do_sample=False, temperature=1.5)])
def test_temperature_zero_or_no_sampling_is_greedy(preset):
    assert kept(preset, [0.2, 0.5, 0.3]) == [1]


def test_dynamic_temperature_follows_the_entropy():
    # p = (0.75, 0.25): H = 0.5623 nats, H / ln 2 = 0.8113, T = 0.5 + (1.5 - 0.5) * 0.8113
    preset = Preset(dynamic_temperature=True, dynatemp_low=0.5, dynatemp_high=1.5, temperature=3.0)
    scores = torch.tensor([[math.log(3.0), 0.0]])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    out = run(preset, scores)
    assert out[0, 0].item() == pytest.approx(math.log(3.0) / (0.5 + h), rel=1e-5)
    assert [name for name, _ in build_chain(preset)] == ["dynamic_temperature"]  # replaces temperature


@pytest.mark.parametrize("curve, expected", [(1.0, [2.0, 1.5, -2.5]), (3.0, [2.0, 1.5, -11.5])])
def test_smoothing_bends_around_the_top_logit(curve, expected):
    # d = (0, -1, -3); curve 1: 2 - 0.5 d^2; curve 3: 2 + 0.5 d^3
    out = run(Preset(smoothing_factor=0.5, smoothing_curve=curve), torch.tensor([[2.0, 1.0, -1.0]]))
    assert out[0].tolist() == pytest.approx(expected)


def test_smoothing_keeps_banned_tokens_banned():
    out = run(Preset(smoothing_factor=0.5, custom_token_bans=[1]), torch.tensor([[2.0, 1.0, -1.0]]))
    assert out[0, 1].item() == float("-inf") and torch.isfinite(out[0, [0, 2]]).all()


@pytest.mark.parametrize("preset, expected", [
    (Preset(top_p=0.7), [0, 1]),  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    (Preset(top_p=0.0), [0]),
    (Preset(top_k=2), [0, 1]),
    (Preset(top_k=1000), [0, 1, 2]),  # larger than the vocabulary: everything stays
    (Preset(min_p=0.5), [0, 1]),  # threshold 0.25
    (Preset(min_p=1.0), [0]),  # only the top token is as likely as itself
    (Preset(top_a=0.5), [0, 1, 2]),  # threshold 0.5 * 0.5^2 = 0.125 < 0.2
    (Preset(top_a=0.9), [0, 1]),  # threshold 0.225
    (Preset(top_a=1.0), [0, 1]),  # threshold 0.25 < 0.3
    (Preset(typical_p=0.5), [0, 1]),  # H = 1.0297; |-ln p - H| = .337, .174, .580 -> order 1, 0, 2
    (Preset(typical_p=0.2), [1]),  # the most typical token is not the most likely one
    (Preset(xtc_probability=1.0, xtc_threshold=0.25), [1, 2]),  # 0.5 and 0.3 pass; keep the least, 0.3
    (Preset(xtc_probability=1.0, xtc_threshold=0.4), [0, 1, 2]),  # only one passes: nothing removed
])
def test_cutoffs_keep_what_was_worked_out_by_hand(preset, expected):
    assert kept(preset, P3) == expected


def test_top_n_sigma():
    # logits 3, 1, -1, -3: mean 0, population std sqrt(5) = 2.236; n = 1 keeps logits >= 0.764
    out = run(Preset(top_n_sigma=1.0), torch.tensor([[3.0, 1.0, -1.0, -3.0]]))
    assert torch.isfinite(out[0]).tolist() == [True, True, False, False]


def test_tail_free():
    # sorted 0.6 .3 .05 .05: second differences |.05|, |.25| -> 1/6, 5/6; z = 0.5 keeps the head only
    assert kept(Preset(tfs=0.5), [0.6, 0.3, 0.05, 0.05]) == [0]
    # .4 .3 .2 .07 .03: first differences -.1 -.1 -.13 -.04, second 0 .03 .09 -> 0, .25, .75;
    # running sums 0, .25, 1: z = 0.5 keeps two tokens, z = 0.2 one
    assert kept(Preset(tfs=0.5), [0.4, 0.3, 0.2, 0.07, 0.03]) == [0, 1]
    assert kept(Preset(tfs=0.2), [0.4, 0.3, 0.2, 0.07, 0.03]) == [0]


def test_epsilon_and_eta_cutoffs_use_units_of_1e4():
    probs = [0.9, 0.0997, 0.0002, 0.0001]
    assert kept(Preset(epsilon_cutoff=1.5), probs) == [0, 1, 2]  # 1.5e-4
    assert kept(Preset(epsilon_cutoff=3.0), probs) == [0, 1]
    # eta = min(eps, sqrt(eps) * exp(-H)); here eps = 2e-3 is the smaller
    assert kept(Preset(eta_cutoff=20.0), probs) == [0, 1]


def test_xtc_never_removes_protected_tokens():
    out = XTCWarper(0.25, 1.0, protected_ids=[0])(None, logits(P3))
    assert torch.isfinite(out).all()


def test_xtc_is_reproducible_with_a_seeded_generator():
    def rolls(seed):
        gen = torch.Generator().manual_seed(seed)
        warper = XTCWarper(0.25, 0.5, generator=gen)
        return [bool(torch.isfinite(warper(None, logits(P3))[0, 0])) for _ in range(20)]

    assert rolls(7) == rolls(7)
    assert True in rolls(7) and False in rolls(7)  # probability 0.5 applies some times, not others


def test_dry_penalises_the_token_that_would_extend_a_repeat():
    # [1 2 3] 4 ... [1 2 3]: the repeat has length 3 -> 4 gets 0.8 * 1.75 ** (3 - 2)
    preset = Preset(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2, dry_sequence_breakers=[])
    out = run(preset, torch.zeros(1, 6), input_ids=[1, 2, 3, 4, 1, 2, 3])
    assert out[0].tolist() == pytest.approx([0, 0, 0, 0, -0.8 * 1.75, 0])


def test_dry_sequence_breakers_end_a_match():
    ctx = ChainContext(encode=lambda text: {"\n": [2]}.get(text, [9]))
    preset = Preset(dry_multiplier=1.0, dry_allowed_length=2, dry_sequence_breakers=["\n"])
    out = run(preset, torch.zeros(1, 6), input_ids=[1, 2, 3, 4, 1, 2, 3], ctx=ctx)
    assert out.abs().sum().item() == 0  # the match [3] stops at the breaker 2: length 1 < 2
    assert DRYProcessor(1.0, 2.0, 1)(torch.tensor([[5, 6, 5]]), torch.zeros(1, 8))[0, 6].item() == -1.0


def test_repetition_penalty_respects_its_range():
    scores = torch.tensor([[4.0, 4.0, -4.0, 4.0]])
    out = run(Preset(repetition_penalty=2.0, repetition_penalty_range=2), scores, input_ids=[0, 1, 2])
    assert out[0].tolist() == [4.0, 2.0, -8.0, 4.0]  # token 0 is outside the last 2
    out = run(Preset(repetition_penalty=2.0, repetition_penalty_range=0), scores, input_ids=[0, 1, 2])
    assert out[0].tolist() == [2.0, 2.0, -8.0, 4.0]
    assert scores.tolist() == [[4.0, 4.0, -4.0, 4.0]]  # the input is not changed in place


def test_frequency_and_presence_penalties():
    out = run(Preset(frequency_penalty=0.5, presence_penalty=0.25), torch.zeros(1, 4), input_ids=[1, 1, 2])
    assert out[0].tolist() == pytest.approx([0.0, -1.25, -0.75, 0.0])


def test_encoder_repetition_penalty_favours_prompt_tokens():
    ctx = ChainContext(prompt_ids=(1,))
    out = run(Preset(encoder_repetition_penalty=1.5), torch.tensor([[2.0, 2.0, -2.0]]), ctx=ctx)
    assert out[0].tolist() == pytest.approx([2.0, 3.0, -2.0])


def test_no_repeat_ngram():
    out = run(Preset(no_repeat_ngram_size=2), torch.zeros(1, 4), input_ids=[1, 2, 3, 1])
    assert torch.isfinite(out[0]).tolist() == [True, True, False, True]


def test_mirostat_v2_cuts_by_surprise_and_learns():
    warper = MirostatV2Warper(tau=1.0, eta=0.1)
    # mu starts at 2 bits: -log2 of .5 .3 .2 = 1, 1.74, 2.32
    out = warper(torch.tensor([[0]]), logits(P3))
    assert torch.isfinite(out[0]).tolist() == [True, True, False]
    warper(torch.tensor([[0, 1]]), logits(P3))  # token 1 was chosen: p = .3 / .8, surprise 1.415 bits
    assert warper.mu.item() == pytest.approx(2.0 - 0.1 * (-math.log2(0.375) - 1.0), rel=1e-5)


def test_logit_bias_bans_and_eos():
    out = run(Preset(logit_bias={1: 5.0}, custom_token_bans=[2], ban_eos_token=True), torch.zeros(1, 5),
              ctx=ChainContext(eos_token_ids=(4,)))
    assert out[0].tolist() == [0.0, 5.0, float("-inf"), 0.0, float("-inf")]


def test_token_ids_outside_the_vocabulary_are_refused():
    with pytest.raises(ValueError, match="logit_bias: token id 99 is outside the vocabulary"):
        build_chain(Preset(logit_bias={99: 1.0}), ChainContext(vocab_size=10))


def test_banned_strings_ban_their_tokenisation():
    encoded = {"ab": [3, 4], " ab": [5, 4]}
    ctx = ChainContext(encode=lambda text: encoded[text])
    out = run(Preset(banned_strings=["ab"]), torch.zeros(1, 6), input_ids=[0, 3], ctx=ctx)
    assert torch.isfinite(out[0]).tolist() == [True, True, True, True, False, True]
    out = run(Preset(banned_strings=["ab"]), torch.zeros(1, 6), input_ids=[0, 1], ctx=ctx)
    assert torch.isfinite(out[0]).all()


def test_chain_order_follows_sampler_priority():
    base = dict(min_p=0.5, temperature=3.0)
    first = Preset(**base, sampler_priority=["min_p", "temperature"])
    second = Preset(**base, sampler_priority=["temperature", "min_p"])
    assert [n for n, _ in build_chain(first)] == ["min_p", "temperature"]
    # min_p first cuts 0.2 (< 0.25); temperature 3 first flattens to .387 .326 .285, so nothing is cut
    assert kept(first, P3) == [0, 1]
    assert kept(second, P3) == [0, 1, 2]


def test_temperature_last_moves_temperature_to_the_end():
    preset = Preset(temperature=3.0, min_p=0.5, temperature_last=True)
    # smoothing moves with them, as in text-generation-webui
    assert priority(preset)[-3:] == ["temperature", "dynamic_temperature", "quadratic_sampling"]
    assert [n for n, _ in build_chain(preset)] == ["min_p", "temperature"]
    assert priority(Preset()) == list(DEFAULT_PRIORITY)


def test_everything_filtered_still_leaves_one_token():
    harsh = Preset(top_k=1, top_p=0.0, min_p=1.0, top_a=1.0, tfs=0.0, typical_p=0.0, top_n_sigma=0.01,
                   epsilon_cutoff=9.0, eta_cutoff=20.0, mirostat_mode=2, mirostat_tau=0.01,
                   xtc_probability=1.0, xtc_threshold=0.0)
    flat = torch.zeros(1, 50)  # a flat distribution: every cutoff would like to drop everything
    for scores in (flat, torch.randn(1, 50, generator=torch.Generator().manual_seed(0))):
        for name, processor in build_chain(harsh):
            assert torch.isfinite(processor(torch.tensor([[0]]), scores)).sum() >= 1, name
        assert torch.isfinite(run(harsh, scores)).sum() >= 1


def test_build_processors_keeps_its_signature():
    chain = build_processors(Preset(ban_eos_token=True, top_k=3), [7], device="cpu")
    out = chain(torch.tensor([[0]]), torch.arange(10.0).unsqueeze(0))
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [6, 8, 9]


@pytest.mark.parametrize("make, message", [
    (lambda: sampling.DynamicTemperatureWarper(2.0, 1.0), "dynatemp_low"),
    (lambda: sampling.SmoothingWarper(0.0), "smoothing_factor"),
    (lambda: sampling.TailFreeWarper(1.5), "tfs"),
    (lambda: sampling.XTCWarper(0.9, 0.5), "xtc_threshold"),
    (lambda: sampling.DRYProcessor(1.0, 0.5, 2), "dry_base"),
    (lambda: sampling.MirostatV2Warper(-1.0, 0.1), "mirostat_tau"),
    (lambda: sampling.AdaptivePWarper(0.0, 0.9), "adaptive_target"),
    (lambda: sampling.RepetitionPenaltyProcessor(1.2, -1), "repetition_penalty_range"),
])
def test_bad_arguments_say_which_setting(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# -- fixes found by comparing with text-generation-webui's and llama.cpp's samplers on the same logits --

def test_xtc_skips_the_step_when_newline_or_eos_would_be_removed():
    # text-generation-webui's rule: removing a newline/EOS top choice would make replies run on, so the
    # whole step is left alone (before, only the protected token stayed and so became *more* likely)
    out = XTCWarper(0.25, 1.0, protected_ids=[0])(None, logits(P3))  # 0.5 (protected) would go
    assert torch.equal(out, logits(P3))
    out = XTCWarper(0.25, 1.0, protected_ids=[2])(None, logits(P3))  # 0.2 is no top choice: XTC acts
    assert torch.isfinite(out[0]).tolist() == [False, True, True]


def test_xtc_with_tied_top_choices_keeps_exactly_one():
    # 0.4, 0.4, 0.2 with threshold 0.3: two top choices, tied; one of them must go (before: neither did)
    out = XTCWarper(0.3, 1.0)(None, logits([0.4, 0.4, 0.2]))
    assert torch.isfinite(out[0]).tolist() == [False, True, True]  # the higher token id stays
    out = XTCWarper(0.2, 1.0)(None, logits([0.3, 0.3, 0.3, 0.1]))
    assert torch.isfinite(out[0]).tolist() == [False, False, True, True]


def test_xtc_threshold_zero_never_keeps_a_cut_token_alone():
    scores = torch.tensor([[2.0, 1.0, float("-inf"), 0.0]])
    out = XTCWarper(0.0, 1.0)(None, scores)
    assert torch.isfinite(out[0]).tolist() == [False, False, False, True]


def test_greedy_is_the_argmax_whatever_the_choice_samplers_say():
    # typical_p 0.2 keeps only the most *typical* token (1), XTC removes the top one, Adaptive-P favours
    # the one nearest its target: none of that applies to greedy decoding, which takes token 0
    for extra in (dict(typical_p=0.2), dict(xtc_probability=1.0, xtc_threshold=0.25), dict(adaptive_target=0.2)):
        for greedy in (dict(temperature=0.0), dict(do_sample=False)):
            assert kept(Preset(**extra, **greedy), P3) == [0], extra
            assert kept(Preset(**extra), P3) != [0]  # the same sampler does act when sampling


def test_mirostat_tau_zero_keeps_only_the_top_token():
    preset = Preset(mirostat_mode=2, mirostat_tau=0.0)  # valid in the preset, so it must run
    chain = build_chain(preset)
    scores = logits(P3)
    for step in range(3):
        scores_out = chain[0][1](torch.tensor([[0, 0]]), scores)
        assert torch.isfinite(scores_out[0]).tolist() == [True, False, False]


def test_temperature_last_moves_smoothing_too():
    preset = Preset(temperature=2.0, smoothing_factor=0.5, min_p=0.1, temperature_last=True)
    assert [n for n, _ in build_chain(preset)] == ["min_p", "temperature", "quadratic_sampling"]


def _adaptive_reference(probs, target, decay, chosen_before):
    """Adaptive-P's facts written out in plain Python: the moving average starts at equilibrium, the aim is
    2 target - average (clamped), new logit 5 - 10 d^2 / (1 + d) with d = |p - aim| / 0.3."""
    decay = min(decay, 0.99)
    weighted, total = target / (1 - decay), 1 / (1 - decay)
    for p in chosen_before:
        weighted, total = p + decay * weighted, 1 + decay * total
    aim = min(1.0, max(0.0, 2 * target - weighted / total))
    return [5 - 10 * (abs(p - aim) / 0.3) ** 2 / (1 + abs(p - aim) / 0.3) for p in probs]


def test_adaptive_p_follows_its_definition_step_by_step():
    warper = sampling.AdaptivePWarper(0.3, 0.9)
    probs = [0.6, 0.3, 0.1]
    first = warper(torch.tensor([[5]]), logits(probs))
    assert first[0].tolist() == pytest.approx(_adaptive_reference(probs, 0.3, 0.9, []), abs=1e-5)
    assert first.argmax().item() == 1  # the token nearest the target
    # token 0 (p = 0.6) was chosen: the average rises above the target, so the aim drops below it
    second = warper(torch.tensor([[5, 0]]), logits(probs))
    assert second[0].tolist() == pytest.approx(_adaptive_reference(probs, 0.3, 0.9, [0.6]), abs=1e-5)
    third = warper(torch.tensor([[5, 0, 2]]), logits(probs))
    assert third[0].tolist() == pytest.approx(_adaptive_reference(probs, 0.3, 0.9, [0.6, 0.1]), abs=1e-5)


def test_adaptive_p_keeps_cut_tokens_cut_and_caps_decay():
    scores = torch.tensor([[1.0, float("-inf"), 0.0]])
    out = sampling.AdaptivePWarper(0.5, 1.0)(None, scores)
    assert out[0, 1].item() == float("-inf") and torch.isfinite(out[0, [0, 2]]).all()
    assert sampling.AdaptivePWarper(0.5, 1.0).decay == 0.99


def test_adaptive_p_has_its_place_in_the_chain():
    preset = Preset(adaptive_target=0.3, min_p=0.05, mirostat_mode=2)
    assert [n for n, _ in build_chain(preset)] == ["min_p", "adaptive_p", "mirostat"]
    assert build_chain(Preset(adaptive_target=-0.01)) == []  # SillyTavern's "off"


def _every_sampler_on() -> Preset:
    return Preset(temperature=0.9, dynamic_temperature=False, smoothing_factor=0.2, top_k=40, top_p=0.95,
                  min_p=0.01, top_n_sigma=3.0, typical_p=0.99, tfs=0.99, top_a=0.01, epsilon_cutoff=0.5,
                  eta_cutoff=0.5, xtc_probability=0.5, xtc_threshold=0.05, repetition_penalty=1.1,
                  frequency_penalty=0.1, presence_penalty=0.1, dry_multiplier=0.5, no_repeat_ngram_size=3,
                  encoder_repetition_penalty=1.05, mirostat_mode=2, adaptive_target=0.4)


def test_no_stage_draws_from_the_process_wide_generator():
    """Meta-test: every stochastic sampler takes the request's generator (ChainContext.generator). A stage
    that drew from torch's global generator would make a seeded reply depend on whatever else ran."""
    preset = _every_sampler_on()
    scores = torch.randn(1, 64, generator=torch.Generator().manual_seed(1))

    def run_steps(seed: int) -> list[list[bool]]:
        chain = build_chain(preset, ChainContext(prompt_ids=(1, 2, 3), encode=lambda t: [5],
                                                 generator=torch.Generator().manual_seed(seed)))
        ids, kept_rows = [1, 2, 3], []
        for _ in range(12):
            out = scores
            for _, processor in chain:
                out = processor(torch.tensor([ids]), out)
            kept_rows.append(torch.isfinite(out[0]).tolist())
            ids.append(int(out.argmax()))
        return kept_rows

    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = run_steps(7)
    assert torch.equal(torch.get_rng_state(), before), "a stage drew from torch's global generator"
    torch.manual_seed(12345)  # whatever the global generator does, the request's seed decides
    assert run_steps(7) == first
    assert any(run_steps(seed) != first for seed in range(8, 14))  # and the seed does matter (XTC rolls)
