"""Formatting for training with the micro model's real tokenizer and chat template: which tokens carry
labels, what the cutoff does, plain-text windows, and the preview."""

from __future__ import annotations

import pytest

from modules.templates import ChatTemplate
from modules.training.data import DataError, Record
from modules.training.formatting import IGNORE, Formatter, preview_html, split
from modules.training.settings import TrainingSettings

CHAT = Record("trip.jsonl line 1", ({"role": "system", "content": "You plan trips."},
                                    {"role": "user", "content": "Where to?"},
                                    {"role": "assistant", "content": "Rome."},
                                    {"role": "user", "content": "When?"},
                                    {"role": "assistant", "content": "In May."}))


@pytest.fixture(scope="module")
def tokenizer(micro_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(micro_path)


def formatter(tokenizer, template: str | None = None, **settings) -> Formatter:
    return Formatter(tokenizer, ChatTemplate(template or tokenizer.chat_template), {}, TrainingSettings(**settings))


def trained_text(tokenizer, sample) -> str:
    return tokenizer.decode([t for t, label in zip(sample.input_ids, sample.labels) if label != IGNORE],
                            skip_special_tokens=False)


def test_only_the_assistant_turns_carry_labels(tokenizer):
    (sample,) = formatter(tokenizer).format([CHAT]).samples
    full = ChatTemplate(tokenizer.chat_template).render(list(CHAT.messages), add_generation_prompt=False)
    assert sample.input_ids == tokenizer(full, add_special_tokens=False)["input_ids"]  # the model's own text
    # each reply with its end-of-turn marker (the model must learn to stop), nothing else
    assert trained_text(tokenizer, sample) == "Rome.<|im_end|>\nIn May.<|im_end|>\n"
    masked = tokenizer.decode([t for t, label in zip(sample.input_ids, sample.labels) if label == IGNORE],
                              skip_special_tokens=False)
    assert "You plan trips." in masked and "Where to?" in masked and "<|im_start|>assistant\n" in masked
    assert all(label in (IGNORE, token) for token, label in zip(sample.input_ids, sample.labels))


def test_train_on_everything(tokenizer):
    (sample,) = formatter(tokenizer, assistant_only=False).format([CHAT]).samples
    assert sample.labels == sample.input_ids


def test_a_template_that_rewrites_earlier_turns_gives_one_sample_per_reply(tokenizer):
    # Like templates that drop old reasoning: earlier replies render differently once a later turn exists.
    template = ("{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}<|im_start|>assistant\n"
                "(earlier)<|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    samples = formatter(tokenizer, template).format([CHAT]).samples
    assert [trained_text(tokenizer, s) for s in samples] == ["Rome.<|im_end|>\n", "In May.<|im_end|>\n"]
    assert "(earlier)" in tokenizer.decode(samples[1].input_ids)


def test_cutoff_truncates_or_drops_and_reports(tokenizer):
    long = Record("d.jsonl line 2", ({"role": "user", "content": "word " * 200},
                                     {"role": "assistant", "content": "ok"}))
    late = Record("d.jsonl line 3", ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo " * 200}))
    kept = formatter(tokenizer, cutoff=64).format([CHAT, long, late])
    # truncating `long` cuts its only reply away, so it has nothing to train on: dropped; `late` keeps a part
    assert [s.source for s in kept.samples] == ["trip.jsonl line 1", "d.jsonl line 3"]
    assert kept.samples[1].truncated and len(kept.samples[1].input_ids) == 64 and kept.samples[1].trained > 0
    assert [source for source, _ in kept.truncated] == ["d.jsonl line 2", "d.jsonl line 3"]
    assert [source for source, _ in kept.dropped] == ["d.jsonl line 2"]
    dropped = formatter(tokenizer, cutoff=64, over_cutoff="drop").format([CHAT, long, late])
    assert [s.source for s in dropped.samples] == ["trip.jsonl line 1"]
    report = dropped.report(64)
    assert "1 samples" in report and "2 dropped (longer than 64 tokens): d.jsonl line 2" in report


def test_all_samples_over_the_cutoff_is_an_error(tokenizer):
    with pytest.raises(DataError, match=r"all 1 samples are longer than the cutoff of 8 tokens.*shortest: \d+"):
        formatter(tokenizer, cutoff=8, over_cutoff="drop").format([CHAT])


def test_a_chat_without_a_reply_or_a_failing_template_names_the_sample(tokenizer):
    lonely = Record("q.jsonl line 4", ({"role": "user", "content": "anyone?"},))
    with pytest.raises(DataError, match="q.jsonl line 4: no assistant message to learn from"):
        formatter(tokenizer).format([lonely])
    strict = "{% if messages[0].role != 'user' %}{{ raise_exception('roles must start with user') }}{% endif %}x"
    with pytest.raises(DataError, match="trip.jsonl line 1: .*roles must start with user"):
        formatter(tokenizer, strict).format([CHAT])


def test_plain_text_windows_with_a_stride(tokenizer):
    text = " ".join(f"w{i}" for i in range(120))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    samples = formatter(tokenizer, cutoff=40, text_stride=30).format([Record("notes.txt", text=text)]).samples
    starts = list(range(0, len(ids), 30))
    starts = starts[: next(i for i, s in enumerate(starts) if s + 40 >= len(ids)) + 1]
    assert [s.input_ids for s in samples] == [ids[s:s + 40] for s in starts]
    assert all(s.labels == s.input_ids for s in samples)  # plain text: every token is trained
    assert samples[0].source == "notes.txt tokens 0-40"


def test_split_holds_out_a_seeded_share(tokenizer):
    samples = formatter(tokenizer).format([Record(f"l{i}", CHAT.messages) for i in range(10)]).samples
    train, held = split(samples, 0.2, seed=1)
    assert len(held) == 2 and len(train) == 8
    assert [s.source for s in split(samples, 0.2, seed=1)[1]] == [s.source for s in held]
    with pytest.raises(DataError, match="at least 2 samples"):
        split(samples[:1], 0.2, seed=1)


def test_preview_greys_masked_spans_and_counts_tokens(tokenizer):
    (sample,) = formatter(tokenizer).format([CHAT]).samples
    html = preview_html([sample], tokenizer)
    assert f"trip.jsonl line 1 — {len(sample.input_ids)} tokens, {sample.trained} trained" in html
    assert '<span class="train-trained">Rome.&lt;|im_end|&gt;\n</span>' in html
    assert '<span class="train-masked">&lt;|im_start|&gt;system\nYou plan trips.' in html
    assert "<|im_start|>" not in html  # escaped, never markup
