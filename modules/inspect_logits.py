"""What the sampler chain does to the next-token distribution, stage by stage.

The Notebook tab's "Next token" and "Sampler chain" views call `inspect_next_token`: one forward pass
for the text's next-token logits, then the very chain generation would build (`build_chain`), applied
one stage at a time, keeping the distribution after each. `score_text` gives, for every token of a
text, the probability and rank the model gave it (for colouring a reply by probability).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from modules.loaders import registry
from modules.presets import Preset

if TYPE_CHECKING:  # torch and the chain load with the model, after the page is up (start-up time)
    import torch

    from modules.sampling import ChainContext


class Inspectable(Protocol):
    """What a backend must offer for these views (the Transformers backend does)."""

    def prompt_ids(self, prompt: str, preset: Preset) -> list[int]: ...

    def chain_context(self, ids: list[int], preset: Preset) -> ChainContext: ...

    def next_token_logits(self, ids: list[int]) -> torch.Tensor: ...

    def token_logprobs(self, ids: list[int]) -> torch.Tensor: ...

    def token_text(self, token_id: int) -> str: ...

    def tokenize(self, text: str) -> list[int]: ...

    @property
    def context_length(self) -> int: ...


class CannotInspect(RuntimeError):
    """The loaded backend does not expose logits (e.g. a remote engine)."""


@dataclass(frozen=True)
class Candidate:
    token_id: int
    text: str
    prob: float


@dataclass(frozen=True)
class StageView:
    """The distribution after one stage: its top candidates and how many tokens are still possible."""

    name: str
    top: list[Candidate]
    survivors: int


@dataclass(frozen=True)
class Inspection:
    prompt_tokens: int
    stages: list[StageView]  # "model" (raw logits) first, then each active stage in chain order

    @property
    def before(self) -> StageView:
        return self.stages[0]

    @property
    def after(self) -> StageView:
        return self.stages[-1]


def _require(backend: Any) -> Inspectable:
    if not registry.capabilities(backend).logits:
        raise CannotInspect(f"the {backend.loader} loader does not expose its logits")
    return backend


def _view(name: str, scores: torch.Tensor, backend: Inspectable, top: int) -> StageView:
    probs = scores.float().softmax(dim=-1)[0].cpu()
    values, ids = probs.topk(min(top, probs.shape[-1]))
    tops = [Candidate(int(i), backend.token_text(int(i)), float(v)) for v, i in zip(values, ids) if v > 0]
    return StageView(name, tops, int(scores.isfinite().sum()))


def inspect_next_token(backend: Any, text: str, preset: Preset, top: int = 50, seed: int = 0) -> Inspection:
    """The next-token distribution for `text` before the chain and after each of its stages.

    Random stages (XTC) draw from a generator seeded with `seed`, so a view is reproducible.
    """
    import torch

    from modules.sampling import ChainContext, build_chain

    backend = _require(backend)
    # The model cannot look further back than its context: keep the end of a longer text.
    ids = backend.prompt_ids(text, preset)[-backend.context_length:]
    base = backend.chain_context(ids, preset)
    ctx = ChainContext(**{**base.__dict__, "generator": torch.Generator().manual_seed(seed)})
    scores = backend.next_token_logits(ids)
    input_ids = torch.tensor([ids], device=scores.device)
    stages = [_view("model", scores, backend, top)]
    with torch.inference_mode():  # guidance runs the model again; no autograd graph needed
        for name, processor in build_chain(preset, ctx):
            scores = processor(input_ids, scores)
            stages.append(_view(name, scores, backend, top))
    return Inspection(len(ids), stages)


@dataclass(frozen=True)
class ScoredToken:
    text: str
    prob: float | None  # the model's probability for this token given the text before it (None: the
    rank: int  # 1 = it was the most likely token            first token of a text, with no context)


def score_text(backend: Any, prompt: str, reply: str) -> list[ScoredToken]:
    """Each token of `reply` (after `prompt`) with the probability and rank the model gave it."""
    backend = _require(backend)
    neutral = Preset()
    head = backend.prompt_ids(prompt, neutral) if prompt else []
    reply_ids = backend.tokenize(reply)
    ids = head + reply_ids
    if len(ids) > backend.context_length:  # score the end of a text longer than the context
        ids = ids[-backend.context_length:]
        head = ids[:max(0, len(ids) - len(reply_ids))]
        reply_ids = ids[len(head):]
    if not reply_ids:
        return []
    out = []
    if not head:  # the first token has no context to be predicted from: shown, not scored
        out.append(ScoredToken(backend.token_text(reply_ids[0]), None, 0))
        reply_ids = reply_ids[1:]
        if not reply_ids:
            return out
    logprobs = backend.token_logprobs(ids)
    start = len(ids) - len(reply_ids)
    for pos, token in enumerate(reply_ids, start=start):
        row = logprobs[pos - 1]
        lp = float(row[token])
        out.append(ScoredToken(backend.token_text(token), math.exp(lp), int((row > lp).sum()) + 1))
    return out


# -- HTML for the UI (every token text is escaped: it comes from the model) ----------------------------

def _token_label(text: str) -> str:
    shown = text.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "␣") or "∅"
    return html.escape(shown)


def candidates_table(inspection: Inspection, limit: int = 50) -> str:
    """Top candidates before and after the chain, side by side."""
    after = {c.token_id: c.prob for c in inspection.after.top}
    rows = []
    for rank, cand in enumerate(inspection.before.top[:limit], start=1):
        post = after.get(cand.token_id, 0.0)
        cls = "cut" if post == 0.0 else ""
        rows.append(f"<tr class='{cls}'><td>{rank}</td><td><code>{_token_label(cand.text)}</code></td>"
                    f"<td>{cand.prob:.2%}</td><td>{post:.2%}</td></tr>")
    return ("<table class='next-token-table' id='next-token-table'><thead><tr><th>#</th><th>token</th>"
            "<th>model</th><th>after samplers</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
            f"<p>{inspection.after.survivors} token(s) can be sampled after the chain; "
            f"prompt {inspection.prompt_tokens} tokens.</p>")


def chain_bars(inspection: Inspection, limit: int = 10) -> str:
    """A small bar chart per stage: how the head of the distribution changes along the chain."""
    parts = []
    for index, stage in enumerate(inspection.stages):
        bars = "".join(
            f"<div class='bar-row'><code class='bar-label'>{_token_label(c.text)}</code>"
            f"<span class='bar' style='width:{max(c.prob * 100, 0.5):.1f}%'></span>"
            f"<span class='bar-value'>{c.prob:.1%}</span></div>" for c in stage.top[:limit])
        title = "model (raw)" if index == 0 else f"{index}. {stage.name}"
        parts.append(f"<div class='chain-stage' data-stage='{html.escape(stage.name)}'><h4>{html.escape(title)}</h4>"
                     f"<small>{stage.survivors} possible</small>{bars}</div>")
    return "<div class='chain-view' id='chain-view'>" + "".join(parts) + "</div>"


def coloured_tokens(tokens: list[ScoredToken]) -> str:
    """The reply with each token tinted by its probability (red = unlikely); rank and p on hover."""
    spans = []
    for tok in tokens:
        if tok.prob is None:
            spans.append(f"<span class='prob-token unscored'>{html.escape(tok.text)}</span>")
            continue
        hue = int(120 * tok.prob)  # 0 = red (unlikely) .. 120 = green (likely)
        spans.append(f"<span class='prob-token' style='background:hsl({hue},70%,35%)' "
                     f"title='rank {tok.rank}, p = {tok.prob:.3f}'>{html.escape(tok.text)}</span>")
    return "<div class='prob-text' id='prob-text'>" + "".join(spans) + "</div>"
