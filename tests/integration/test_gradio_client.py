"""The UI's event API through the real gradio_client against a server process."""

import shutil

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from modules.generation import GenerationRequest
from modules.presets import Preset


@pytest.fixture(scope="module")
def server(module_server):
    return module_server()


def preset_args(preset: Preset) -> list:
    return list(preset.model_dump().values())


def text_of(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


def test_chat_send_streams_the_same_reply_as_the_pipeline(server, make_app):
    preset = Preset(temperature=0.0, max_new_tokens=20, ban_eos_token=True)
    client = Client(server.url, verbose=False)
    job = client.submit("Hello", *preset_args(preset), api_name="/chat_send")
    outputs = list(job)
    _, chatbot, status = job.outputs()[-1]
    assert len(outputs) >= 2  # the user message first, then the reply
    assert [m["role"] for m in chatbot] == ["user", "assistant"]
    app = make_app()
    app.models.load("parlour-micro")
    expected = list(app.pipeline.stream(GenerationRequest(preset=preset, messages=[
        {"role": "user", "content": "Hello"}])))[-1].text
    assert text_of(chatbot[1]) == expected
    assert "20 tokens" in status


def test_out_of_range_parameters_are_reported_not_generated(server):
    client = Client(server.url, verbose=False)
    before = server.health()["requests"]
    values = preset_args(Preset())
    names = list(Preset.model_fields)
    values[names.index("top_p")] = 3.0
    with pytest.raises(AppError, match="3.0 is greater than maximum value 1.0"):
        client.predict("Hello", *values, api_name="/chat_send")
    assert server.health()["requests"] == before


def test_model_load_failure_keeps_the_model(start_server, models_dir, tmp_path):
    folder = tmp_path / "models"
    for name in ("parlour-micro", "parlour-micro-gpt2"):
        shutil.copytree(models_dir / name, folder / name)
    (folder / "broken").mkdir()
    (folder / "broken" / "config.json").write_text('{"model_type": "llama"}')
    (folder / "broken" / "model.safetensors").write_bytes(b"truncated")
    server = start_server("--models-dir", str(folder), "--model", "parlour-micro")
    client = Client(server.url, verbose=False)
    status, _ = client.predict("broken", api_name="/model_load")
    assert "could not load broken" in status and "still loaded: parlour-micro" in status
    assert server.health()["model"] == "parlour-micro"
    status, info = client.predict("parlour-micro-gpt2", api_name="/model_load")
    assert "gpt2" in status and '"architecture": "gpt2"' in info
