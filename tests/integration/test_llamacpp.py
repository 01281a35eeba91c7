"""GGUF through llama.cpp: a tiny GGUF the tests write with the `gguf` package from the micro Llama."""

import os
import subprocess
import sys
import threading

import pytest

from modules.generation import GenerationRequest
from modules.loaders.llamacpp import LlamaCppBackend
from modules.loaders.options import LlamaCppOptions, RemoteOptions
from modules.presets import Preset
from tests.conftest import free_port
from tests.gguf_writer import write_gguf

GREEDY = Preset(temperature=0.0, max_new_tokens=24, ban_eos_token=True)


@pytest.fixture(scope="module")
def gguf_models(models_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf-models")
    write_gguf(models_dir / "parlour-micro", folder / "micro.f32.gguf")
    return folder


def test_gguf_greedy_text_equals_transformers(gguf_models, micro_backend):
    gguf = LlamaCppBackend(gguf_models / "micro.f32.gguf", LlamaCppOptions(n_ctx=512))
    prompt = micro_backend.chat_template.render([{"role": "user", "content": "Hello"}])
    assert gguf.tokenize(prompt) == micro_backend.tokenize(prompt)
    ours = "".join(d.text for d in gguf.stream(prompt, GREEDY, threading.Event()))
    reference = "".join(d.text for d in micro_backend.stream(prompt, GREEDY, threading.Event()))
    assert ours == reference and ours.strip()
    assert gguf.info()["chat_template"] == "model's own"  # the template embedded in the GGUF


def test_model_manager_infers_llamacpp_and_chats(gguf_models, make_app):
    app = make_app(models_dir=gguf_models)
    assert app.models.list() == ["micro.f32.gguf"]
    backend = app.models.load("micro.f32.gguf", options={"n_ctx": 256})
    assert backend.loader == "llama.cpp" and backend.context_length == 256
    final = list(app.pipeline.stream(GenerationRequest(preset=GREEDY, messages=[
        {"role": "user", "content": "Hello"}])))[-1]
    assert final.tokens == 24 and final.finish_reason == "length"


def test_stop_ends_the_llamacpp_worker(gguf_models):
    gguf = LlamaCppBackend(gguf_models / "micro.f32.gguf", LlamaCppOptions(n_ctx=2048))
    produced = {"n": 0}
    real_generate = gguf.llm.generate

    def counting_generate(*args, **kwargs):
        for token in real_generate(*args, **kwargs):
            produced["n"] += 1
            yield token

    gguf.llm.generate = counting_generate
    cancel = threading.Event()
    at_cancel = None
    for delta in gguf.stream("x", Preset(max_new_tokens=1500, ban_eos_token=True), cancel):
        if at_cancel is None and delta.tokens:
            at_cancel = produced["n"]  # llama.cpp is fast: tokens made before Stop may still be queued
            cancel.set()
    assert delta.finish_reason == "cancelled"
    assert produced["n"] <= at_cancel + 1  # the worker made at most the token in flight after Stop
    assert not [t for t in threading.enumerate() if t.name.startswith("generate-")]


def test_sampler_settings_reach_llamacpp(gguf_models):
    gguf = LlamaCppBackend(gguf_models / "micro.f32.gguf", LlamaCppOptions(n_ctx=512))
    sampled = Preset(temperature=1.5, max_new_tokens=20, ban_eos_token=True, seed=7)
    first = "".join(d.text for d in gguf.stream("def", sampled, threading.Event()))
    again = "".join(d.text for d in gguf.stream("def", sampled, threading.Event()))
    other = "".join(d.text for d in gguf.stream("def", sampled.model_copy(update={"seed": 8}), threading.Event()))
    assert first == again and first != other


def test_remote_backend_against_llamacpp_server(gguf_models, make_app, tmp_path):
    """llama-cpp-python's own OpenAI-compatible server as the remote engine, in another process."""
    port = free_port()
    log = (tmp_path / "llama-server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model",
                             str(gguf_models / "micro.f32.gguf"), "--model_alias", "micro", "--port", str(port),
                             "--n_ctx", "512"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        from modules.loaders.remote import list_remote_models

        options = {"base_url": f"http://127.0.0.1:{port}/v1"}
        import time
        deadline = time.monotonic() + 60
        while True:  # poll until the server answers (its start-up, not a fixed sleep)
            try:
                assert list_remote_models(options) == ["micro"]
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        app = make_app()
        backend = app.models.load("remote:micro", options=options)
        assert backend.context_length in (512, 4096)
        final = list(app.pipeline.stream(GenerationRequest(preset=GREEDY, prompt="def main():")))[-1]
        local = LlamaCppBackend(gguf_models / "micro.f32.gguf", LlamaCppOptions(n_ctx=512))
        expected = "".join(d.text for d in local.stream("def main():", GREEDY, threading.Event()))
        assert final.text == expected
        chat = list(app.pipeline.stream(GenerationRequest(preset=GREEDY, messages=[
            {"role": "user", "content": "Hello"}])))[-1]
        assert chat.text.strip()
        assert RemoteOptions(**options).base_url.endswith("/v1")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
