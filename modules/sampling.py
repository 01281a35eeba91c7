"""The sampler chain: one small LogitsProcessor per sampler, built in `sampler_priority` order.

Transformers' own processors are used where they exist (temperature, top-k, top-p, min-p, typical,
epsilon, eta, encoder repetition penalty, no-repeat n-gram, token bans, bad words, sequence bias,
classifier-free guidance); the classes here cover the samplers it lacks. Each validates its
arguments in `__init__`, never changes the scores it is given in place, and keeps at least one token
(the current most likely one) whatever its settings. generate() is given a neutral GenerationConfig
so it adds no processors of its own: the chain built here is the whole story, which is also what
`modules/inspect_logits.py` replays stage by stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from transformers import (
    EncoderRepetitionPenaltyLogitsProcessor,
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
    UnbatchedClassifierFreeGuidanceLogitsProcessor,
)

from modules.presets import Preset

NEG_INF = float("-inf")
#: Longest repeat DRY measures: the penalty is astronomically large long before this, and the cap
#: keeps a context of one token repeated thousands of times from costing quadratic time per step.
DRY_MAX_MATCH = 64


def _keep(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`scores` with tokens outside `mask` set to -inf; each row's most likely token always survives."""
    top = scores.argmax(dim=-1, keepdim=True)
    mask = mask.scatter(-1, top, True)
    return scores.masked_fill(~mask, NEG_INF)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class GreedyWarper(LogitsProcessor):
    """Temperature 0: keep only the most likely token.

    >>> GreedyWarper()(None, torch.tensor([[1.0, 3.0, 2.0]]))
    tensor([[-inf, 3., -inf]])
    """

    def __call__(self, input_ids: torch.LongTensor | None, scores: torch.FloatTensor) -> torch.FloatTensor:
        return _keep(scores, torch.zeros_like(scores, dtype=torch.bool))


class DynamicTemperatureWarper(LogitsProcessor):
    """Temperature chosen per token from the distribution's normalised entropy:
    `T = low + (high - low) * (H / log(n)) ** exponent`, so a confident model runs cool and an
    uncertain one hot.

    >>> DynamicTemperatureWarper(0.5, 0.5, 1.0)(None, torch.tensor([[2.0, 0.0]]))
    tensor([[4., 0.]])
    """

    def __init__(self, low: float, high: float, exponent: float = 1.0) -> None:
        _check(0.0 <= low <= high, f"dynatemp_low ({low}) must be between 0 and dynatemp_high ({high})")
        _check(exponent > 0, f"dynatemp_exponent must be above 0, got {exponent}")
        self.low, self.high, self.exponent = low, high, exponent

    def temperatures(self, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(dim=-1)
        plogp = torch.where(probs > 0, probs * probs.clamp_min(1e-30).log(), torch.zeros_like(probs))
        entropy = -plogp.sum(dim=-1)
        valid = torch.isfinite(scores).sum(dim=-1).clamp_min(2).to(scores.dtype)
        normalised = (entropy / valid.log()).clamp(0.0, 1.0)
        return self.low + (self.high - self.low) * normalised ** self.exponent

    def __call__(self, input_ids: torch.LongTensor | None, scores: torch.FloatTensor) -> torch.FloatTensor:
        temps = self.temperatures(scores).clamp_min(1e-4)  # 0 would divide by zero; 1e-4 is greedy in effect
        return scores / temps.unsqueeze(-1)


class SmoothingWarper(LogitsProcessor):
    """Quadratic (to cubic) sampling: with `d = logit - max logit` (<= 0), the new logit is
    `max - factor * (k d^2 - s d^3)`, `k = (3 - curve) / 2`, `s = (curve - 1) / 2`. Near the top
    (|d| < 1/factor) logits move closer together; far from it they fall away faster.

    >>> SmoothingWarper(1.0)(None, torch.tensor([[2.0, 0.0]]))
    tensor([[ 2., -2.]])
    """

    def __init__(self, factor: float, curve: float = 1.0) -> None:
        _check(factor > 0, f"smoothing_factor must be above 0 (0 turns it off), got {factor}")
        _check(1.0 <= curve <= 3.0, f"smoothing_curve must be between 1 and 3, got {curve}")
        self.factor = factor
        self.k, self.s = (3.0 - curve) / 2.0, (curve - 1.0) / 2.0

    def __call__(self, input_ids: torch.LongTensor | None, scores: torch.FloatTensor) -> torch.FloatTensor:
        finite = torch.isfinite(scores)
        top = scores.max(dim=-1, keepdim=True).values
        d = torch.where(finite, scores - top, torch.zeros_like(scores))
        bent = top - self.factor * (self.k * d * d - self.s * d * d * d)
        return torch.where(finite, bent, scores)


class TopNSigmaWarper(LogitsProcessor):
    """Keep tokens whose logit is within `n` standard deviations (population, over the finite
    logits) of the top logit.

    >>> TopNSigmaWarper(1.0)(None, torch.tensor([[3.0, 1.0, -1.0, -3.0]]))
    tensor([[3., 1., -inf, -inf]])
    """

    def __init__(self, n: float) -> None:
        _check(n > 0, f"top_n_sigma must be above 0 (0 turns it off), got {n}")
        self.n = n

    def __call__(self, input_ids: torch.LongTensor | None, scores: torch.FloatTensor) -> torch.FloatTensor:
        finite = torch.isfinite(scores)
        count = finite.sum(dim=-1, keepdim=True).clamp_min(1)
        values = torch.where(finite, scores, torch.zeros_like(scores))
        mean = values.sum(dim=-1, keepdim=True) / count
        var = (torch.where(finite, scores - mean, torch.zeros_like(scores)) ** 2).sum(dim=-1, keepdim=True) / count
        top = scores.max(dim=-1, keepdim=True).values
        return _keep(scores, scores >= top - self.n * var.sqrt())


class TailFreeWarper(LogitsProcessor):
    """Tail-free sampling: sort the probabilities, take the absolute second differences, normalise
    them to sum to 1 and keep the head until their running sum passes `z`. The two last tokens have
    no second difference and go whenever anything is cut.

    >>> TailFreeWarper(0.5)(None, torch.tensor([[0.6, 0.3, 0.05, 0.05]]).log()).isfinite()
    tensor([[ True, False, False, False]])
    """

    def __init__(self, z: float) -> None:
        _check(0.0 <= z < 1.0, f"tfs must be at least 0 and below 1 (1 turns it off), got {z}")
        self.z = z

    def __call__(self, input_ids: torch.LongTensor | None, scores: torch.FloatTensor) -> torch.FloatTensor:
        n = scores.shape[-1]
        if n < 3:
            return scores
        probs = scores.softmax(dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        d2 = sorted_probs.diff(dim=-1).diff(dim=-1).abs()
        total = d2.sum(dim=-1, keepdim=True)
        cdf = (d2 / total.clamp_min(1e-30)).cumsum(dim=-1)
        kept = (cdf <= self.z).sum(dim=-1, keepdim=True)
        # nothing passed z (or a flat distribution): keep everything
        kept = torch.where((kept == n - 2) | (total == 0), torch.full_like(kept, n), kept)
        positions = torch.arange(n, device=scores.device).expand_as(scores)
        keep_sorted = positions < kept
        mask = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        return _keep(scores, mask)


class TopAWarper(LogitsProcessor):
    """Drop tokens with probability below `a * p_max ** 2`: a cut that tightens as the model gets sure.

    >>> TopAWarper(0.5)(None, torch.tensor([[0.6, 0.3, 0.1]]).log()).isfinite()
    tensor([[ True,  True, False]])
    """

    def __init__(self, a: float) -> None:
        _check(0.0 < a <= 1.0, f"top_a must be above 0 and at most 1 (0 turns it off), got {a}")
        self.a = a

    def __call__(self, input_ids: torch.LongTensor | None, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = scores.softmax(dim=-1)
        top = probs.max(dim=-1, keepdim=True).values
        return _keep(scores, probs >= self.a * top * top)


class XTCWarper(LogitsProcessor):
    """Exclude Top Choices: with probability `probability`, remove every token at least `threshold`
    likely except the least likely of them, so the model takes a less obvious path that is still a
    good one. Nothing changes when fewer than two tokens pass the threshold. `protected_ids` (EOS,
    newline) are never removed, so XTC cannot make replies run on forever.

    >>> XTCWarper(0.15, 1.0)(None, torch.tensor([[0.5, 0.3, 0.2]]).log()).isfinite()
    tensor([[False, False,  True]])
    """

    def __init__(self, threshold: float, probability: float, protected_ids: Sequence[int] = (),
                 generator: torch.Generator | None = None) -> None:
        _check(0.0 <= threshold <= 0.5, f"xtc_threshold must be between 0 and 0.5, got {threshold}")
        _check(0.0 < probability <= 1.0, f"xtc_probability must be above 0 and at most 1 (0 turns XTC off), "
                                         f"got {probability}")
        self.threshold, self.probability = threshold, probability
        self.protected_ids = list(protected_ids)
        self.generator = generator

    def __call__(self, input_ids: torch.LongTensor | None, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = scores.shape[0]
        roll = torch.rand(rows, generator=self.generator, device="cpu").to(scores.device)
        probs = scores.softmax(dim=-1)
        above = (probs >= self.threshold) & (probs > 0)  # tokens already cut are no top choice
        least = torch.where(above, probs, torch.full_like(probs, 2.0)).min(dim=-1, keepdim=True).values
        remove = above & (probs > least)
        remove &= (above.sum(dim=-1, keepdim=True) >= 2) & (roll < self.probability).unsqueeze(-1)
        if self.protected_ids:
            protected = torch.zeros_like(remove)
            protected[:, self.protected_ids] = True
            remove &= ~protected
        return scores.masked_fill(remove, NEG_INF)


class DRYProcessor(LogitsProcessor):
    """DRY ("don't repeat yourself"): if the context ends with a sequence that appeared before, the
    token that followed it then is penalised by `multiplier * base ** (length - allowed_length)` once
    the repeat is at least `allowed_length` tokens long. Sequence breakers (newline, ':' ...) end a
    match, so names and list markers may repeat freely.

    Context [1, 2, 3, 4, 1, 2, 3] ends with [1, 2, 3], which was followed by 4: a repeat of length 3.

    >>> DRYProcessor(1.0, 2.0, 2)(torch.tensor([[1, 2, 3, 4, 1, 2, 3]]), torch.zeros(1, 5))
    tensor([[ 0.,  0.,  0.,  0., -2.]])
    """

    def __init__(self, multiplier: float, base: float, allowed_length: int, breaker_ids: Sequence[int] = ()) -> None:
        _check(multiplier > 0, f"dry_multiplier must be above 0 (0 turns DRY off), got {multiplier}")
        _check(base >= 1.0, f"dry_base must be at least 1, got {base}")
        _check(allowed_length >= 1, f"dry_allowed_length must be at least 1, got {allowed_length}")
        self.multiplier, self.base, self.allowed_length = multiplier, base, allowed_length
        self.breakers = frozenset(breaker_ids)

    def _penalties(self, ids: list[int]) -> dict[int, float]:
        if len(ids) < 2 or ids[-1] in self.breakers:
            return {}
        longest: dict[int, int] = {}
        n = len(ids)
        for i in range(n - 2, -1, -1):  # earlier positions holding the context's last token
            if ids[i] != ids[-1]:
                continue
            following = ids[i + 1]
            if following in self.breakers:
                continue
            length = 1
            while length < DRY_MAX_MATCH and i - length >= 0:
                earlier = ids[i - length]
                if earlier in self.breakers or earlier != ids[n - 1 - length]:
                    break
                length += 1
            longest[following] = max(longest.get(following, 0), length)
        return {token: self.multiplier * self.base ** (length - self.allowed_length)
                for token, length in longest.items() if length >= self.allowed_length}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        penalty = torch.zeros_like(scores)
        for row, ids in enumerate(input_ids.tolist()):
            for token, value in self._penalties(ids).items():
                if token < scores.shape[-1]:
                    penalty[row, token] = value
        return scores - penalty


def _recent(input_ids: torch.LongTensor, window: int) -> torch.LongTensor:
    return input_ids[:, -window:] if window > 0 else input_ids


class RepetitionPenaltyProcessor(LogitsProcessor):
    """Divide positive (multiply negative) logits of tokens among the last `window` tokens by
    `penalty`. Transformers' own version has no window, hence this one (window 0 = everything).

    >>> RepetitionPenaltyProcessor(2.0, 2)(torch.tensor([[0, 1, 2]]), torch.tensor([[4.0, 4.0, -4.0]]))
    tensor([[ 4.,  2., -8.]])
    """

    def __init__(self, penalty: float, window: int = 0) -> None:
        _check(penalty > 0, f"repetition_penalty must be above 0 (1 turns it off), got {penalty}")
        _check(window >= 0, f"repetition_penalty_range must be 0 or more, got {window}")
        self.penalty, self.window = penalty, window

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        recent = _recent(input_ids, self.window)
        picked = scores.gather(1, recent)
        picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return scores.scatter(1, recent, picked)


def _counts(input_ids: torch.LongTensor, scores: torch.Tensor, window: int) -> torch.Tensor:
    recent = _recent(input_ids, window)
    return torch.zeros_like(scores).scatter_add(1, recent, torch.ones_like(recent, dtype=scores.dtype))


class FrequencyPenaltyProcessor(LogitsProcessor):
    """Subtract `penalty` times each token's count among the last `window` tokens (OpenAI's meaning).

    >>> FrequencyPenaltyProcessor(0.5)(torch.tensor([[1, 1, 2]]), torch.zeros(1, 3))
    tensor([[ 0.0000, -1.0000, -0.5000]])
    """

    def __init__(self, penalty: float, window: int = 0) -> None:
        _check(-2.0 <= penalty <= 2.0 and penalty != 0, f"frequency_penalty must be in [-2, 2] and not 0 "
                                                        f"(0 turns it off), got {penalty}")
        self.penalty, self.window = penalty, window

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores - self.penalty * _counts(input_ids, scores, self.window)


class PresencePenaltyProcessor(LogitsProcessor):
    """Subtract `penalty` once from every token present among the last `window` tokens.

    >>> PresencePenaltyProcessor(0.5)(torch.tensor([[1, 1, 2]]), torch.zeros(1, 3))
    tensor([[ 0.0000, -0.5000, -0.5000]])
    """

    def __init__(self, penalty: float, window: int = 0) -> None:
        _check(-2.0 <= penalty <= 2.0 and penalty != 0, f"presence_penalty must be in [-2, 2] and not 0 "
                                                        f"(0 turns it off), got {penalty}")
        self.penalty, self.window = penalty, window

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores - self.penalty * (_counts(input_ids, scores, self.window) > 0).to(scores.dtype)


class MirostatV2Warper(LogitsProcessor):
    """Mirostat v2: keep the tokens whose surprise (-log2 p) is at most `mu`, then move `mu` toward
    the target: `mu -= eta * (surprise of the chosen token - tau)`. The chosen token is only known at
    the next call (it is the last of `input_ids` then), so the update happens there; a new instance
    per generation starts at `mu = 2 tau`.

    >>> MirostatV2Warper(tau=1.0, eta=0.1)(None, torch.tensor([[0.5, 0.3, 0.2]]).log()).isfinite()
    tensor([[ True,  True, False]])
    """

    def __init__(self, tau: float, eta: float) -> None:
        _check(tau > 0, f"mirostat_tau must be above 0, got {tau}")
        _check(0 <= eta <= 1, f"mirostat_eta must be between 0 and 1, got {eta}")
        self.tau, self.eta = tau, eta
        self.mu: torch.Tensor | None = None
        self._last_bits: torch.Tensor | None = None  # surprise of every token at the previous step

    def __call__(self, input_ids: torch.LongTensor | None, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.mu is None:
            self.mu = torch.full((scores.shape[0],), 2.0 * self.tau, device=scores.device)
        elif self._last_bits is not None and input_ids is not None:
            chosen = input_ids[:, -1:]
            observed = self._last_bits.gather(1, chosen).squeeze(1).clamp_max(64.0)
            self.mu = self.mu - self.eta * (observed - self.tau)
        bits = -scores.log_softmax(dim=-1) / math.log(2)
        out = _keep(scores, bits <= self.mu.unsqueeze(-1))
        self._last_bits = -out.log_softmax(dim=-1) / math.log(2)
        return out


@dataclass(frozen=True)
class ChainContext:
    """What some samplers need besides the preset: tokens, the model (for guidance) and randomness."""

    eos_token_ids: Sequence[int] = ()
    device: str = "cpu"
    #: the prompt's token ids (the encoder repetition penalty favours or avoids them)
    prompt_ids: Sequence[int] = ()
    #: text -> token ids without special tokens (DRY breakers, banned strings, XTC's newline)
    encode: Callable[[str], list[int]] | None = None
    vocab_size: int | None = None
    #: the model and the negative prompt's ids, for classifier-free guidance
    model: Any = None
    negative_ids: Sequence[int] | None = None
    generator: torch.Generator | None = None
    #: this request's constraint stage (modules/constraints.py), when its preset constrains the reply
    constraint: LogitsProcessor | None = None


Stage = tuple[str, LogitsProcessor]


def priority(preset: Preset) -> list[str]:
    """The order the priority stages run in: `sampler_priority`, with temperature moved last when
    `temperature_last` is set."""
    order = list(preset.sampler_priority)
    if preset.temperature_last:
        temps = [name for name in order if name in ("temperature", "dynamic_temperature")]
        order = [name for name in order if name not in temps] + temps
    return order


def _check_ids(ids: Sequence[int], key: str, vocab: int | None) -> None:
    if vocab is not None:
        bad = [i for i in ids if i >= vocab]
        _check(not bad, f"{key}: token id {bad[0] if bad else ''} is outside the vocabulary ({vocab} tokens)")


def _fixed_stages(preset: Preset, ctx: ChainContext) -> list[Stage]:
    """Stages that run before the priority chain: guidance on the raw logits, then bans and biases."""
    stages: list[Stage] = []
    if preset.guidance_scale != 1.0 and ctx.model is not None:
        negative = torch.tensor([list(ctx.negative_ids)], device=ctx.device) if ctx.negative_ids else None
        stages.append(("guidance_scale", UnbatchedClassifierFreeGuidanceLogitsProcessor(
            preset.guidance_scale, ctx.model, unconditional_ids=negative,
            unconditional_attention_mask=torch.ones_like(negative) if negative is not None else None)))
    if ctx.constraint is not None:
        # First after guidance: the cutoffs then choose among allowed tokens only (each keeps its most likely
        # token, which is then an allowed one), and guidance's arithmetic never sees a -inf.
        stages.append(("constraint", ctx.constraint))
    if preset.logit_bias:
        _check_ids(list(preset.logit_bias), "logit_bias", ctx.vocab_size)
        stages.append(("logit_bias", SequenceBiasLogitsProcessor(
            [[[token], bias] for token, bias in preset.logit_bias.items()])))
    banned = list(preset.custom_token_bans)
    _check_ids(banned, "custom_token_bans", ctx.vocab_size)
    if preset.ban_eos_token and ctx.constraint is None:  # a constraint decides where the reply may end
        banned += list(ctx.eos_token_ids)
    if banned:
        stages.append(("custom_token_bans", SuppressTokensLogitsProcessor(sorted(set(banned)), device=ctx.device)))
    if preset.banned_strings and ctx.encode is not None:
        # A string is usually written as its canonical tokens, with or without a leading space;
        # other spellings of it are not caught (the field's description, and so the docs, say so).
        sequences = {tuple(ctx.encode(variant)) for text in preset.banned_strings
                     for variant in (text, " " + text.lstrip()) if text}
        sequences.discard(())
        if sequences:
            stages.append(("banned_strings", NoBadWordsLogitsProcessor([list(s) for s in sorted(sequences)],
                                                                       eos_token_id=list(ctx.eos_token_ids) or None)))
    return stages


def _stage(name: str, preset: Preset, ctx: ChainContext) -> LogitsProcessor | None:
    """The processor for one `sampler_priority` name, or None when the preset leaves it off."""
    p = preset
    if name == "temperature":
        if p.greedy:
            return None  # greedy is the argmax after the whole chain (see build_chain), not a stage in it
        return TemperatureLogitsWarper(p.temperature) if p.temperature != 1.0 and not p.dynamic_temperature else None
    if name == "dynamic_temperature":
        return DynamicTemperatureWarper(p.dynatemp_low, p.dynatemp_high, p.dynatemp_exponent) \
            if p.dynamic_temperature and not p.greedy else None
    if name == "quadratic_sampling":
        return SmoothingWarper(p.smoothing_factor, p.smoothing_curve) if p.smoothing_factor > 0 else None
    if name == "repetition_penalty":
        return RepetitionPenaltyProcessor(p.repetition_penalty, p.repetition_penalty_range) \
            if p.repetition_penalty != 1.0 else None
    if name == "presence_penalty":
        return PresencePenaltyProcessor(p.presence_penalty, p.repetition_penalty_range) if p.presence_penalty else None
    if name == "frequency_penalty":
        return FrequencyPenaltyProcessor(p.frequency_penalty, p.repetition_penalty_range) \
            if p.frequency_penalty else None
    if name == "dry":
        if p.dry_multiplier <= 0:
            return None
        breakers = {i for text in p.dry_sequence_breakers for i in (ctx.encode(text) if ctx.encode else [])}
        return DRYProcessor(p.dry_multiplier, p.dry_base, p.dry_allowed_length, sorted(breakers))
    if name == "encoder_repetition_penalty":
        if p.encoder_repetition_penalty == 1.0 or not ctx.prompt_ids:
            return None
        return EncoderRepetitionPenaltyLogitsProcessor(p.encoder_repetition_penalty,
                                                       torch.tensor([list(ctx.prompt_ids)], device=ctx.device))
    if name == "no_repeat_ngram":
        return NoRepeatNGramLogitsProcessor(p.no_repeat_ngram_size) if p.no_repeat_ngram_size > 0 else None
    if name == "top_n_sigma":
        return TopNSigmaWarper(p.top_n_sigma) if p.top_n_sigma > 0 else None
    if name == "top_k":
        return TopKLogitsWarper(p.top_k) if p.top_k > 0 else None
    if name == "top_p":
        return TopPLogitsWarper(p.top_p) if p.top_p < 1.0 else None
    if name == "typical_p":
        # Transformers wants a mass above 0; a tiny one keeps just the most typical token, as 0 means.
        return TypicalLogitsWarper(max(p.typical_p, 1e-6)) if p.typical_p < 1.0 else None
    if name == "epsilon_cutoff":
        return EpsilonLogitsWarper(p.epsilon_cutoff * 1e-4) if p.epsilon_cutoff > 0 else None
    if name == "eta_cutoff":
        return EtaLogitsWarper(p.eta_cutoff * 1e-4, device=ctx.device) if p.eta_cutoff > 0 else None
    if name == "tfs":
        return TailFreeWarper(p.tfs) if p.tfs < 1.0 else None
    if name == "top_a":
        return TopAWarper(p.top_a) if p.top_a > 0 else None
    if name == "min_p":
        return MinPLogitsWarper(p.min_p) if p.min_p > 0 else None
    if name == "mirostat":
        return MirostatV2Warper(p.mirostat_tau, p.mirostat_eta) if p.mirostat_mode == 2 else None
    if name == "xtc":
        if p.xtc_probability <= 0:
            return None
        protected = list(ctx.eos_token_ids) + (ctx.encode("\n")[-1:] if ctx.encode else [])
        return XTCWarper(p.xtc_threshold, p.xtc_probability, protected, ctx.generator)
    raise ValueError(f"unknown sampler {name!r}")


def build_chain(preset: Preset, ctx: ChainContext | None = None) -> list[Stage]:
    """The active stages for `preset`, named, in the order they run."""
    ctx = ctx or ChainContext()
    stages = _fixed_stages(preset, ctx)
    for name in priority(preset):
        processor = _stage(name, preset, ctx)
        if processor is not None:
            stages.append((name, processor))
    if preset.greedy:
        # Temperature 0 picks the most likely token after every other stage (penalties, bans, DRY...),
        # as greedy decoding does; shown as the last stage so the chain view matches what generation does.
        stages.append(("greedy", GreedyWarper()))
    return stages


def build_processors(preset: Preset, eos_token_ids: Sequence[int], device: str = "cpu",
                     context: ChainContext | None = None) -> LogitsProcessorList:
    """The chain for `preset` as the LogitsProcessorList generate() takes. Without the final greedy
    stage: generation does the argmax itself (do_sample=False), after any processors extensions append."""
    base = context or ChainContext()
    ctx = ChainContext(**{**base.__dict__, "eos_token_ids": tuple(eos_token_ids), "device": device})
    return LogitsProcessorList(processor for name, processor in build_chain(preset, ctx) if name != "greedy")
