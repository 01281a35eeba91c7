import pytest

from modules.presets import Preset, PresetError, PresetStore, parse_preset
from tests.conftest import ROOT


def test_shipped_presets_all_load():
    store = PresetStore(ROOT / "presets")
    names = store.names()
    assert len(names) >= 3 and "Default" in names
    for name in names:
        assert isinstance(store.load(name), Preset)
    assert store.load("Deterministic").greedy


def test_round_trip_stores_only_changed_keys(tmp_path):
    store = PresetStore(tmp_path)
    preset = Preset(temperature=0.5, top_k=7)
    path = store.save("mine", preset)
    assert set(__import__("yaml").safe_load(path.read_text())) == {"temperature", "top_k"}
    assert store.load("mine") == preset
    store.delete("mine")
    assert store.names() == []


def test_text_generation_webui_style_file_loads():
    preset = parse_preset("temperature: 0.7\ntop_p: 0.9\ntop_k: 20\nrepetition_penalty: 1.15\n", "tgw")
    assert (preset.temperature, preset.top_p, preset.top_k, preset.repetition_penalty) == (0.7, 0.9, 20, 1.15)


@pytest.mark.parametrize("text, key", [
    ('temperature: "hot"\n', "temperature"),
    ("top_p: 1.5\n", "top_p"),
    ("- 1\n- 2\n", "mapping"),
    ("!!python/object/apply:os.system ['echo hacked']\n", "not valid YAML"),
    ("tempreature: 1\n", "tempreature"),
])
def test_bad_presets_name_the_problem(text, key):
    with pytest.raises(PresetError, match=key):
        parse_preset(text, "bad")


def test_bad_file_does_not_hide_the_others(tmp_path):
    (tmp_path / "good.yaml").write_text("temperature: 0.3\n")
    (tmp_path / "broken.yaml").write_text("temperature: [\n")
    (tmp_path / "huge.yaml").write_text("# " + "x" * 1_000_000)
    store = PresetStore(tmp_path)
    assert store.load("good").temperature == 0.3
    with pytest.raises(PresetError, match="broken"):
        store.load("broken")
    with pytest.raises(PresetError, match="limit"):
        store.load("huge")


def test_names_are_confined(tmp_path):
    with pytest.raises(PresetError, match="bad preset name"):
        PresetStore(tmp_path).save("../escape", Preset())
    assert not (tmp_path.parent / "escape.yaml").exists()
