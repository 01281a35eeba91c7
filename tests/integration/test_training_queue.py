"""Chat and API requests while a training job owns the model: they wait in the queue (position shown) and
run once it stops, or — when the job was started that way — get a 503 with Retry-After at once."""

from __future__ import annotations

import concurrent.futures

import openai
import pytest
from fastapi.testclient import TestClient

from modules.api import build_api
from modules.generation import GenerationRequest, ModelBusy
from modules.presets import Preset
from modules.training.job import TrainingManager
from modules.training.settings import TrainingSettings
from tests.integration.test_training import until
from tests.training_data import chat_lines, write_jsonl

HELLO = [{"role": "user", "content": "Hello"}]
SHORT = Preset(temperature=0.0, max_new_tokens=4)


@pytest.fixture()
def training(make_app, tmp_path):
    """An App with the micro model, its API as the official openai client sees it, and a way to start a long
    training job (it runs until stopped)."""
    app = make_app(loras_dir=tmp_path / "loras")
    app.models.load("parlour-micro")
    job = TrainingManager(app.models, tmp_path / "loras", tmp_path / "runs")
    data = write_jsonl(tmp_path / "training" / "qa.jsonl", chat_lines(8))
    http = TestClient(build_api(app), base_url="http://127.0.0.1")
    client = openai.OpenAI(base_url="http://127.0.0.1", api_key="unused", http_client=http, max_retries=0)

    def start(on_busy: str) -> None:
        job.start(job.plan(TrainingSettings(output=f"busy-{on_busy}", max_steps=100_000, save_steps=100_000,
                                            threads=1, on_busy=on_busy), dataset=data))
        until(lambda: job.progress().step >= 1, "training under way")

    yield app, job, client, start
    job.stop()
    job.join(120)


def test_requests_wait_in_the_queue_until_training_stops(training):
    app, job, client, start = training
    start("wait")
    updates = app.pipeline.stream(GenerationRequest(preset=SHORT, messages=HELLO))
    first = next(updates)
    assert first.queue_position == 1 and first.text == ""  # what the Chat tab shows: waiting, position 1
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        api_reply = pool.submit(client.chat.completions.create, model="parlour-micro", messages=HELLO, max_tokens=4)
        until(lambda: app.queue.waiting() == 2, "the API request queued behind the chat request")
        assert job.progress().state == "training" and not api_reply.done()
        assert job.stop()
        assert job.join(120).state == "stopped"
        rest = list(updates)
        assert rest[-1].finish_reason in ("stop", "length") and rest[-1].tokens > 0
        answer = api_reply.result(timeout=120)
    assert answer.choices[0].message.content is not None and answer.usage.completion_tokens > 0


def test_refuse_mode_answers_503_with_retry_after(training):
    app, job, client, start = training
    start("refuse")
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="parlour-micro", messages=HELLO, max_tokens=4)
    response = caught.value.response
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    body = response.json()["error"]
    assert body["code"] == "model_busy" and "training busy-refuse is using parlour-micro" in body["message"]
    with pytest.raises(ModelBusy, match="try again in about"):
        next(app.pipeline.stream(GenerationRequest(preset=SHORT, messages=HELLO)))
    assert app.queue.waiting() == 0  # refused at once, not queued
    job.stop()
    assert job.join(120).state == "stopped"
    answer = client.chat.completions.create(model="parlour-micro", messages=HELLO, max_tokens=4)
    assert answer.usage.completion_tokens > 0
