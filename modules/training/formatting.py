"""Records -> token ids and labels, as the loaded model will see them, with the loss mask.

Chats are rendered with the model's own chat template (modules/templates.py, sandboxed). The
assistant's spans are found by rendering the chat turn by turn: the text up to turn i with the
generation prompt is the prefix, the text through turn i is prefix + the reply + its end-of-turn
marker, so the loss covers exactly what the model must produce when it answers (its stop token
included). Templates that re-render earlier turns (some strip old reasoning) are not prefix-stable;
such a chat becomes one sample per assistant turn, each trained on its last turn only.

trl's `assistant_only_loss` finds the same spans only in templates with `{% generation %}` markers,
which few models ship; doing it here works with every template and shows the result in the preview.
"""

from __future__ import annotations

import html
import random
from dataclasses import dataclass, field
from typing import Any

from modules.templates import ChatTemplate, TemplateError
from modules.training.data import DataError, Record
from modules.training.settings import TrainingSettings

IGNORE = -100  # the label Transformers' loss skips


@dataclass
class Sample:
    source: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def trained(self) -> int:
        return sum(label != IGNORE for label in self.labels)


@dataclass
class Formatted:
    """The samples of a dataset, and what the cutoff did to it (for the report before the run)."""

    samples: list[Sample]
    truncated: list[tuple[str, int]] = field(default_factory=list)  # (source, tokens before cutting)
    dropped: list[tuple[str, int]] = field(default_factory=list)

    def report(self, cutoff: int) -> str:
        """One or two lines for the user: samples, tokens, and what was longer than the cutoff."""
        tokens = sum(len(s.input_ids) for s in self.samples)
        trained = sum(s.trained for s in self.samples)
        lines = [f"{len(self.samples)} samples, {tokens:,} tokens ({trained:,} trained)"]
        for what, items in (("truncated to", self.truncated), ("dropped (longer than", self.dropped)):
            if items:
                names = ", ".join(f"{source} ({n})" for source, n in items[:5])
                more = f" and {len(items) - 5} more" if len(items) > 5 else ""
                close = ")" if what.startswith("dropped") else ""
                lines.append(f"{len(items)} {what} {cutoff} tokens{close}: {names}{more}")
        return "; ".join(lines)


class Formatter:
    """Tokenizes records for one model: its tokenizer, chat template and BOS habit."""

    def __init__(self, tokenizer: Any, template: ChatTemplate, template_vars: dict[str, Any],
                 settings: TrainingSettings) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.extra = template_vars
        self.settings = settings
        bos = tokenizer.bos_token_id
        # As generation does (TransformersBackend.prompt_ids): BOS first when the tokenizer itself adds one.
        adds_bos = bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]
        self.bos = bos if adds_bos else None

    @classmethod
    def for_backend(cls, backend: Any, settings: TrainingSettings) -> "Formatter":
        return cls(backend.tokenizer, backend.chat_template, backend.template_vars(), settings)

    # ---- chats
    def _render(self, messages: list[dict[str, str]], generation: bool, source: str) -> str:
        try:
            return self.template.render(messages, add_generation_prompt=generation, **self.extra)
        except TemplateError as exc:
            raise DataError(f"{source}: {exc}") from exc

    def chat_pieces(self, record: Record) -> list[tuple[str, list[tuple[int, int]]]]:
        """[(text, assistant character spans)]: one piece for the whole chat, or one per assistant turn
        when the template does not render the chat as a growing prefix."""
        messages = [dict(m) for m in record.messages]
        full = self._render(messages, False, record.source)
        if not self.settings.assistant_only:
            return [(full, [])]  # every token is trained: no spans to find
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not answers:
            raise DataError(f"{record.source}: no assistant message to learn from")
        spans, per_turn, stable = [], [], True
        for i in answers:
            before = self._render(messages[:i], True, record.source)
            through = self._render(messages[: i + 1], False, record.source)
            prefixed = through.startswith(before)
            start = len(before) if prefixed else through.rfind(messages[i]["content"])
            if start < 0:
                raise DataError(f"{record.source}: the chat template does not show assistant turn {i + 1} "
                                "where expected; train on everything instead")
            per_turn.append((through, [(start, len(through))]))
            spans.append((start, len(through)))
            stable = stable and prefixed and full.startswith(through)
        return [(full, spans)] if stable else per_turn

    def _tokens(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        if getattr(self.tokenizer, "is_fast", False):
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = list(enc["input_ids"])
            inside = [any(a <= start < b for a, b in spans) for start, _ in enc["offset_mapping"]]
        else:  # no offsets: tokenize the pieces between span edges one by one
            ids, inside, edge = [], [], 0
            for a, b in spans + [(len(text), len(text))]:
                for piece, flag in ((text[edge:a], False), (text[a:b], True)):
                    part = self.tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
                    ids += part
                    inside += [flag] * len(part)
                edge = b
        if self.bos is not None and ids[:1] != [self.bos]:
            ids, inside = [self.bos] + ids, [False] + inside
        train_all = not self.settings.assistant_only
        return ids, [t if (train_all or flag) else IGNORE for t, flag in zip(ids, inside)]

    # ---- plain text
    def windows(self, record: Record) -> list[Sample]:
        """Plain text cut into `cutoff`-token windows starting every `text_stride` tokens; all trained."""
        ids = self.tokenizer(record.text or "", add_special_tokens=False)["input_ids"]
        if self.bos is not None:
            ids = [self.bos] + ids
        cutoff = self.settings.cutoff
        stride = self.settings.text_stride or cutoff
        out = []
        for start in range(0, max(1, len(ids)), stride):
            window = ids[start:start + cutoff]
            if len(window) >= 2:  # one token predicts nothing
                out.append(Sample(f"{record.source} tokens {start}-{start + len(window)}", window, list(window)))
            if start + cutoff >= len(ids):
                break
        return out

    # ---- all of it
    def format(self, records: list[Record]) -> Formatted:
        cutoff, drop = self.settings.cutoff, self.settings.over_cutoff == "drop"
        result = Formatted([])
        for record in records:
            if record.text is not None:
                result.samples += self.windows(record)
                continue
            for text, spans in self.chat_pieces(record):
                ids, labels = self._tokens(text, spans)
                sample = Sample(record.source, ids, labels)
                if len(ids) > cutoff:
                    if drop:
                        result.dropped.append((record.source, len(ids)))
                        continue
                    result.truncated.append((record.source, len(ids)))
                    sample = Sample(record.source, ids[:cutoff], labels[:cutoff], truncated=True)
                if sample.trained == 0:
                    result.dropped.append((record.source, len(ids)))
                    continue
                result.samples.append(sample)
        if not result.samples:
            if result.dropped:
                shortest = min(n for _, n in result.dropped)
                raise DataError(f"all {len(result.dropped)} samples are longer than the cutoff of {cutoff} tokens "
                                f"or have nothing to train on within it (shortest: {shortest} tokens): raise "
                                "the cutoff or choose truncate")
            raise DataError("the dataset gives no samples to train on")
        return result


def split(samples: list[Sample], share: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, eval): a seeded shuffle holds out `share` of the samples (at least one) for evaluation."""
    if share <= 0:
        return samples, []
    if len(samples) < 2:
        raise DataError(f"an eval split needs at least 2 samples; the dataset has {len(samples)}")
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    held = max(1, round(len(samples) * share))
    chosen = set(order[:held])
    return ([s for i, s in enumerate(samples) if i not in chosen], [s for i, s in enumerate(samples) if i in chosen])


def preview_html(samples: list[Sample], tokenizer: Any, count: int = 3) -> str:
    """The first samples as the model sees them: masked (not trained) spans greyed, with token counts."""
    parts = []
    for sample in samples[:count]:
        head = (f"{html.escape(sample.source)} — {len(sample.input_ids)} tokens, {sample.trained} trained"
                + (" (truncated)" if sample.truncated else ""))
        runs, start = [], 0
        for i in range(1, len(sample.labels) + 1):
            if i == len(sample.labels) or (sample.labels[i] == IGNORE) != (sample.labels[start] == IGNORE):
                text = tokenizer.decode(sample.input_ids[start:i], skip_special_tokens=False)
                kind = "masked" if sample.labels[start] == IGNORE else "trained"
                runs.append(f'<span class="train-{kind}">{html.escape(text)}</span>')
                start = i
        parts.append(f'<div class="train-sample"><div class="train-head">{head}</div>'
                     f'<pre class="train-text">{"".join(runs)}</pre></div>')
    return "\n".join(parts)
