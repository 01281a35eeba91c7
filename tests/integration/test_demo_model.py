"""The built-in demo model (./start.sh and ./test.sh build it into models/ when that folder is empty)."""

import threading

import pytest

from modules.presets import Preset
from tests.conftest import DEMO_DIR

pytestmark = pytest.mark.demo


@pytest.fixture(scope="module")
def demo():
    assert (DEMO_DIR / "config.json").exists(), "the demo model is missing: ./test.sh builds it"
    from modules.loaders.transformers import TransformersBackend

    return TransformersBackend(DEMO_DIR)


@pytest.mark.parametrize("greeting", ["Hello", "Hi, how are you?"])
def test_demo_answers_a_greeting_and_stops(demo, greeting):
    # thinking switched off: the raw text is the answer after a blank line (tests/integration/test_reasoning.py
    # has it thinking, through the pipeline)
    prompt = demo.chat_template.render([{"role": "user", "content": greeting}], enable_thinking=False)
    deltas = list(demo.stream(prompt, Preset(temperature=0.0, max_new_tokens=60), threading.Event()))
    reply = "".join(d.text for d in deltas).strip()
    assert deltas[-1].finish_reason == "stop"  # it ended at <|im_end|>, not at max_new_tokens
    words = reply.split()
    assert 2 <= len(words) <= 20
    assert reply[0].isupper() and reply.rstrip()[-1] in ".!?"
    assert any(w.strip("!,.").lower() in {"hello", "hi", "hey", "help"} for w in words)


def test_demo_is_a_small_llama_with_chatml(demo):
    info = demo.info()
    assert info["architecture"] == "llama"
    assert 3_000_000 < info["parameters"] < 6_000_000
    assert "<|im_start|>" in demo.chat_template.source
