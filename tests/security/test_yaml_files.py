"""Hostile YAML in every file Parlour reads: object tags, alias bombs, huge files, wrong root types."""

import pytest

from modules.fileio import load_yaml
from modules.models import ModelError, ModelSettingsStore
from modules.presets import PresetError, PresetStore
from modules.settings import SettingsError, load_settings

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" \
       "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n" \
       "temperature: *d\n"
TAGS = "temperature: !!python/object/apply:os.system ['touch /tmp/parlour-pwned']\n"


def test_loader_refuses_aliases_and_object_tags():
    with pytest.raises(Exception, match="aliases"):
        load_yaml(BOMB)
    with pytest.raises(Exception, match="python/object"):
        load_yaml(TAGS)
    assert load_yaml("a: [1, 2]\n") == {"a": [1, 2]}


@pytest.mark.parametrize("text", [BOMB, TAGS, "[1, 2, 3]\n", "just a string\n", "temperature: [\n"])
def test_presets(tmp_path, text):
    (tmp_path / "evil.yaml").write_text(text)
    (tmp_path / "fine.yaml").write_text("temperature: 0.5\n")
    store = PresetStore(tmp_path)
    with pytest.raises(PresetError, match="evil"):
        store.load("evil")
    assert store.load("fine").temperature == 0.5


@pytest.mark.parametrize("text", [BOMB, TAGS, "[1]\n", "x" * 2_000_000])
def test_settings_file(tmp_path, text):
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError, match="settings.yaml"):
        load_settings(["--settings", str(path)])


@pytest.mark.parametrize("text", [BOMB, TAGS, "[1]\n"])
def test_model_settings_file(tmp_path, text):
    (tmp_path / "config-user.yaml").write_text(text)
    with pytest.raises(ModelError, match="config-user.yaml"):
        ModelSettingsStore(tmp_path / "config-user.yaml").get("any")


def test_nothing_was_executed():
    from pathlib import Path

    assert not Path("/tmp/parlour-pwned").exists()
