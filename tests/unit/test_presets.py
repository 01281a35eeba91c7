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


FIXTURES = ROOT / "tests" / "fixtures"


def test_shipped_presets_store_only_changed_keys():
    import yaml

    store = PresetStore(ROOT / "presets")
    for name in store.names():
        stored = yaml.safe_load((ROOT / "presets" / f"{name}.yaml").read_text()) or {}
        assert set(stored) == set(store.load(name).changed()), name
    assert {"Default", "Deterministic", "Top-P", "Creative", "Min-P", "Creative-XTC", "DRY-Roleplay"} <= set(
        store.names())


def test_text_generation_webui_preset_file_with_many_keys_loads_as_is():
    preset = PresetStore(FIXTURES).load("tgw-preset")
    assert preset.dry_sequence_breakers == ["\n", ":", "\"", "*"]
    assert preset.sampler_priority[:5] == ["repetition_penalty", "presence_penalty", "frequency_penalty", "dry",
                                           "temperature"]
    # this (older) file's order ends with no_repeat_ngram; a stage it does not name follows it
    assert preset.sampler_priority[-2:] == ["no_repeat_ngram", "adaptive_p"]
    assert (preset.dynamic_temperature, preset.dynatemp_low, preset.dynatemp_high) == (True, 0.8, 1.6)
    assert (preset.xtc_threshold, preset.xtc_probability, preset.top_n_sigma) == (0.15, 0.4, 2.0)
    assert preset.temperature_last and preset.repetition_penalty_range == 2048
    assert "penalty_alpha" not in preset.model_dump()  # beam/contrastive keys are dropped, not errors


def test_round_trip_of_every_kind_of_field(tmp_path):
    store = PresetStore(tmp_path)
    preset = Preset(temperature=0.5, dry_sequence_breakers=["\n", "#"], custom_token_bans=[5, 7],
                    logit_bias={3: -2.5}, banned_strings=["As an AI"], custom_stopping_strings=["\nUser:"],
                    sampler_priority=["min_p", "temperature"], temperature_last=True, ban_eos_token=True)
    store.save("all", preset)
    assert store.load("all") == preset


def test_text_forms_of_list_fields():
    from modules.presets import field_text

    preset = Preset(dry_sequence_breakers='"\\n", ":"', custom_token_bans="13, 198", logit_bias='{"3": -5}',
                    sampler_priority="min_p\ntemperature")
    assert preset.dry_sequence_breakers == ["\n", ":"]
    assert preset.custom_token_bans == [13, 198] and preset.logit_bias == {3: -5.0}
    assert preset.sampler_priority[:2] == ["min_p", "temperature"]
    assert len(preset.sampler_priority) == len(Preset().sampler_priority)  # the rest follow in default order
    for name in ("dry_sequence_breakers", "custom_token_bans", "logit_bias", "sampler_priority"):
        assert Preset(**{name: field_text(name, getattr(preset, name))}) == Preset(**{name: getattr(preset, name)})


@pytest.mark.parametrize("text, key", [
    ("mirostat_mode: 1\n", "mirostat_mode 1 is not supported"),
    ("custom_token_bans: 'a, b'\n", "custom_token_bans"),
    ("dry_sequence_breakers: '\\n, :'\n", "dry_sequence_breakers"),
    ("logit_bias: {5: 300}\n", "logit_bias"),
    ("dynatemp_low: 2\ndynatemp_high: 1\n", "dynatemp_low"),
])
def test_bad_sampler_values_name_the_key(text, key):
    with pytest.raises(PresetError, match=key):
        parse_preset(text, "bad")


def test_unknown_or_repeated_sampler_names_are_skipped_with_a_warning(caplog):
    # text-generation-webui skips a name it does not know (another engine's sampler, a typo); so do we
    with caplog.at_level("WARNING", logger="modules.presets"):
        preset = parse_preset("sampler_priority: [temperature, warp_drive, top_k, top_k]\n", "odd")
    assert preset.sampler_priority[:2] == ["temperature", "top_k"] and "warp_drive" not in preset.sampler_priority
    assert sorted(preset.sampler_priority) == sorted(Preset().sampler_priority)
    assert "warp_drive" in caplog.text


def test_neutralize_keeps_length_and_token_options():
    from modules.presets import neutral_samplers

    preset = Preset(temperature=0.3, min_p=0.2, dry_multiplier=1.0, max_new_tokens=64, seed=5, ban_eos_token=True)
    assert neutral_samplers(preset).changed() == {"max_new_tokens": 64, "seed": 5, "ban_eos_token": True}


def test_docs_table_lists_every_key_and_is_current():
    from modules.presets import docs_table

    docs = (ROOT / "docs" / "presets.md").read_text()
    for name in Preset.model_fields:
        assert f"| `{name}` |" in docs, f"{name} is missing from docs/presets.md"
    assert docs == docs_table(), "docs/presets.md is stale: run python -m modules.presets --docs > docs/presets.md"


def test_text_fields_accept_the_str_of_a_list_or_dict():
    # What a Gradio textbox passes on when an API client sends the model_dump() value itself
    preset = Preset(temperature=0.5, dry_sequence_breakers=["\n", "'"], custom_token_bans=[4],
                    logit_bias={3: -5.0}, sampler_priority=["min_p"], banned_strings=["a,b"])
    as_strings = {k: str(v) for k, v in preset.model_dump().items() if isinstance(v, (list, dict))}
    assert Preset(**{**preset.model_dump(), **as_strings}) == preset
    with pytest.raises(ValueError, match="custom_token_bans"):
        Preset(custom_token_bans="[__import__('os')]")  # literals only: no code runs


def test_docstring_examples_hold():
    import doctest

    import modules.presets

    assert doctest.testmod(modules.presets).attempted >= 1
    assert doctest.testmod(modules.presets).failed == 0
