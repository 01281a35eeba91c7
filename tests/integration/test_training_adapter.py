"""The adapter changes what the model says: after training on one question answered with one fixed
sentence, the greedy reply is that sentence (before, it was not); perplexity on it drops; merged into a
new model folder, the new model says it without the adapter.

On the demo model: the micro model's embeddings are too small for any sentence to become its greedy
reply (measured: its loss stalls near 1.5 nats a token however long it trains), while the demo model
learns this one in a couple of dozen steps.
"""

from __future__ import annotations

import shutil
import threading

import pytest

from modules.models import ModelManager
from modules.perplexity import PerplexityLog
from modules.presets import Preset
from modules.settings import CpuThreads
from modules.training.job import TrainingManager
from modules.training.results import compare_perplexity, merge_adapter
from modules.training.settings import TrainingSettings
from tests.conftest import DEMO_DIR
from tests.training_data import ANSWER, QUESTION, chat_lines, write_jsonl

pytestmark = pytest.mark.demo
GREEDY = Preset(temperature=0.0, max_new_tokens=24)


def reply(backend, question: str = QUESTION) -> str:
    """The greedy answer in the context the training data teaches: the chat rendered by the model's template
    up to where the assistant's words begin. (The demo template's generation prompt opens a thought, which
    plain question-and-answer data never shows; whether the model still says the answer inside its thought
    depends on the demo model's weights, and those differ with the CPU that built them.)"""
    chat = backend.chat_template.render([{"role": "user", "content": question},
                                         {"role": "assistant", "content": ANSWER}], add_generation_prompt=False)
    prompt = chat[:chat.index(ANSWER)]
    return "".join(d.text for d in backend.stream(prompt, GREEDY, threading.Event()))


def test_the_adapter_makes_the_model_answer_with_the_data(tmp_path):
    assert (DEMO_DIR / "config.json").exists(), "the demo model is missing: ./test.sh builds it"
    shutil.copytree(DEMO_DIR, tmp_path / "models" / "parlour-demo")  # merged models are written beside it
    models = ModelManager(tmp_path / "models", tmp_path / "loras", tmp_path / "offload", CpuThreads(1, 1))
    backend = models.load("parlour-demo")
    before = reply(backend)
    assert ANSWER not in before
    job = TrainingManager(models, tmp_path / "loras", tmp_path / "runs")
    data = write_jsonl(tmp_path / "training" / "secret.jsonl", chat_lines(16))
    final = job.run(job.plan(TrainingSettings(output="secret", max_steps=24, learning_rate=3e-3, seed=0, threads=1),
                             dataset=data))
    assert final.state == "done", final.message
    assert reply(models.current()) == before  # training left the served model as it was

    models.set_loras(["secret"])
    assert ANSWER in reply(models.current())

    log = PerplexityLog(tmp_path / "perplexity.jsonl")
    held_out = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n{ANSWER}<|im_end|>\n"
    without, with_it = compare_perplexity(models, "secret", held_out, "held-out", log)
    assert with_it.perplexity < without.perplexity
    assert [r.text for r in log.all()] == ["held-out · base", "held-out · + secret"]  # the Evaluate tab's table
    assert models.current().loras == ("secret",)  # what was applied before is applied again

    merged = merge_adapter(models, "secret", "parlour-demo-secret")
    assert "parlour-demo-secret" in models.list() and (merged / "parlour-training.json").is_file()
    from modules.loaders.transformers import TransformersBackend

    assert ANSWER in reply(TransformersBackend(merged))
