"""What the Model tab says when a model cannot be used: a symbolic link in models/ (refused, named, with
what to do) and a config.json that huggingface_hub rejects (one line naming the field, never a bare
"Error"); the previous model stays loaded."""

from __future__ import annotations

import html
import shutil

import pytest

from modules.models import ModelError


@pytest.fixture()
def own_models(tmp_path, micro_path):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copytree(micro_path, folder / "parlour-micro")
    return folder


def test_a_symlinked_model_folder_is_named_with_what_to_do(make_app, own_models, tmp_path, micro_path):
    from modules.ui.model import links_note

    elsewhere = tmp_path / "big-disk" / "llama"
    shutil.copytree(micro_path, elsewhere)
    (own_models / "big").symlink_to(elsewhere, target_is_directory=True)
    app = make_app(models_dir=own_models)
    assert app.models.list() == ["parlour-micro"]  # the link is not followed
    assert app.models.refused_links() == [("big", str(elsewhere))]
    with pytest.raises(ModelError, match="'big' is a symbolic link .*move the model into it.*--models-dir"):
        app.models.load("big")
    note = links_note(app)
    shown = html.unescape(note)  # names are written as text (render.literal): what the page shows
    assert f"big (→ {elsewhere})" in shown and "--models-dir" in shown
    (own_models / "big").unlink()
    assert links_note(make_app(models_dir=own_models)) == ""


def test_a_config_with_a_field_of_the_wrong_type_fails_in_one_line(make_app, own_models):
    broken = own_models / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "vocab_size": "many"}')
    (broken / "model.safetensors").write_bytes(b"unused")
    app = make_app(models_dir=own_models)
    app.models.load("parlour-micro")
    with pytest.raises(ModelError) as caught:
        app.models.load("broken")
    message = str(caught.value)
    assert "\n" not in message and "not a Transformers model folder" in message and "vocab_size" in message
    assert app.models.current().name == "parlour-micro"
