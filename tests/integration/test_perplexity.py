"""Perplexity against a hand computation on the micro model."""

import math

import pytest
import torch

from modules.perplexity import PerplexityLog, evaluate, perplexity

TEXT = "def main():\n    print('hello world')\n    return 0\n" * 6


def by_hand(backend, text):
    """Score every token with the whole text as context, one position at a time."""
    ids = backend.tokenize(text)
    total = 0.0
    with torch.inference_mode():
        for i in range(1, len(ids)):
            logits = backend.model(torch.tensor([ids[:i]])).logits[0, -1]
            total -= torch.log_softmax(logits.float(), -1)[ids[i]].item()
    return math.exp(total / (len(ids) - 1)), len(ids) - 1


def test_single_window_equals_hand_computation(micro_backend):
    expected, count = by_hand(micro_backend, TEXT)
    ppl, scored = perplexity(micro_backend, TEXT, max_length=1024, stride=1024)
    assert scored == count
    assert ppl == pytest.approx(expected, rel=1e-4)


def test_sliding_window_scores_each_token_once(micro_backend):
    count = len(micro_backend.tokenize(TEXT)) - 1
    ppl, scored = perplexity(micro_backend, TEXT, max_length=32, stride=16)
    assert scored == count
    full, _ = perplexity(micro_backend, TEXT, max_length=1024, stride=1024)
    assert ppl != full and 1.0 < ppl  # less context per token, a different (valid) number


def test_results_are_logged_and_bad_arguments_refused(micro_backend, tmp_path):
    log = PerplexityLog(tmp_path / "ppl.jsonl")
    result = evaluate(micro_backend, TEXT, "code.py", 64, 32, log)
    (tmp_path / "ppl.jsonl").open("a").write("{broken\n")
    assert [r.perplexity for r in log.all()] == [result.perplexity]
    assert result.model == "parlour-micro" and result.text == "code.py"
    with pytest.raises(ValueError, match="stride"):
        perplexity(micro_backend, TEXT, max_length=8, stride=16)
