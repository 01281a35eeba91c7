"""ModelManager on real folders: listing, loading, failures that keep the previous model."""

import pytest

from modules.models import ModelError


def test_lists_hf_folders_only(make_app, models_dir):
    (models_dir / "not-a-model").mkdir(exist_ok=True)
    (models_dir / "half.partial").mkdir(exist_ok=True)
    (models_dir / "half.partial" / "config.json").write_text("{}")
    app = make_app()
    assert app.models.list() == ["parlour-micro", "parlour-micro-gpt2"]


def test_broken_model_keeps_the_previous_one(make_app, models_dir):
    app = make_app()
    app.models.load("parlour-micro")
    broken = models_dir / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text('{"model_type": "llama", "vocab_size": 10}')
    (broken / "model.safetensors").write_bytes(b"not really safetensors")
    with pytest.raises(ModelError, match="broken"):
        app.models.load("broken")
    assert app.models.current().name == "parlour-micro"
    assert "last error" not in app.models.status()  # a model is loaded; the status names it
    with pytest.raises(ModelError, match="not in"):
        app.models.load("missing")
    with pytest.raises(ModelError, match="bad model name"):
        app.models.load("../../etc")
    assert app.models.current().name == "parlour-micro"
    import shutil
    shutil.rmtree(broken)


def test_load_switch_and_unload(make_app):
    app = make_app()
    app.models.load("parlour-micro")
    app.models.load("parlour-micro-gpt2")
    assert app.models.info()["architecture"] == "gpt2"
    app.models.unload()
    assert app.models.current() is None and app.models.status() == "No model loaded"
