"""Streaming decodes each token through the Rust tokenizer where Transformers' wrapper adds nothing: the
text must be exactly what tokenizer.decode gives."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from modules.loaders.transformers import _decoder
from tests.conftest import DEMO_DIR

TEXT = "Hello <|im_end|> there,  ünïcode 🙂 x\n\tdef f(): return 1"


@pytest.mark.parametrize("name", ["parlour-micro", "parlour-micro-gpt2", "demo"])
def test_the_fast_decoder_says_what_the_tokenizer_says(models_dir, name):
    tokenizer = AutoTokenizer.from_pretrained(DEMO_DIR if name == "demo" else models_dir / name)
    decode = _decoder(tokenizer)
    ids = tokenizer(TEXT)["input_ids"]
    assert "backend" in decode.__code__.co_freevars  # the fast path was taken
    for skip in (True, False):
        for part in (ids, ids[:3], ids[5:9], ids[-1:]):
            assert decode(part, skip) == tokenizer.decode(part, skip_special_tokens=skip)


def test_a_tokenizer_that_cleans_up_spaces_keeps_the_wrapper(models_dir):
    tokenizer = AutoTokenizer.from_pretrained(models_dir / "parlour-micro", clean_up_tokenization_spaces=True)
    decode = _decoder(tokenizer)
    assert "backend" not in decode.__code__.co_freevars
    ids = tokenizer(TEXT)["input_ids"]
    assert decode(ids, True) == tokenizer.decode(ids, skip_special_tokens=True)
