"""The remote loader against another Parlour: its OpenAI API in a second server process."""

from modules.generation import GenerationRequest
from modules.models import ModelError
from modules.presets import Preset

GREEDY = Preset(temperature=0.0, max_new_tokens=16, ban_eos_token=True)


def final(app, **request):
    return list(app.pipeline.stream(GenerationRequest(preset=GREEDY, **request)))[-1]


def test_remote_parlour_streams_the_same_text_as_local(start_server, models_dir, make_app):
    engine = start_server("--models-dir", str(models_dir), "--model", "parlour-micro", "--api-key", "engine-key")
    app = make_app()
    options = {"base_url": engine.url + "/v1", "api_key": "engine-key"}
    from modules.loaders.remote import list_remote_models

    assert list_remote_models(options) == ["parlour-micro"]
    remote = app.models.load("remote:parlour-micro", options=options)
    assert remote.context_length == 2048
    local = make_app()
    local.models.load("parlour-micro")
    assert final(app, prompt="def main():").text == final(local, prompt="def main():").text
    hello = [{"role": "user", "content": "Hello"}]
    assert final(app, messages=hello).text == final(local, messages=hello).text  # the engine templated it
    assert remote.tokenize("def main():") == local.models.current().tokenize("def main():")  # via /internal/encode
    before = engine.health()["requests"]
    assert before >= 2


def test_wrong_key_or_model_is_a_clear_load_error(start_server, models_dir, make_app):
    engine = start_server("--models-dir", str(models_dir), "--model", "parlour-micro", "--api-key", "engine-key")
    app = make_app()
    import pytest

    with pytest.raises(ModelError, match="not answering|401"):
        app.models.load("remote:parlour-micro", options={"base_url": engine.url + "/v1", "api_key": "wrong"})
    with pytest.raises(ModelError, match="has no model 'gpt-9'"):
        app.models.load("remote:gpt-9", options={"base_url": engine.url + "/v1", "api_key": "engine-key"})
    assert app.models.current() is None
