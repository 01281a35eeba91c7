"""The Parameters tab's logic: controls generated from Preset, text forms, support marks, model defaults."""

import gradio as gr
import pytest

from modules.loaders import registry
from modules.presets import Preset, PresetError, PresetStore
from modules.ui.parameters import ParameterControls, _control, control_value, create_controls, unsupported_keys


def controls_for(preset):
    return {name: _control(name, field, getattr(preset, name)) for name, field in Preset.model_fields.items()}


def test_every_preset_key_gets_a_control_of_the_right_kind():
    controls = controls_for(Preset())
    assert list(controls) == list(Preset.model_fields)
    assert isinstance(controls["temperature"], gr.Slider) and isinstance(controls["ban_eos_token"], gr.Checkbox)
    assert isinstance(controls["seed"], gr.Number) and isinstance(controls["sampler_priority"], gr.Textbox)
    assert controls["min_p"].info == Preset.model_fields["min_p"].description  # the tooltip


def test_control_values_round_trip_through_preset_from():
    preset = Preset(temperature=0.4, top_k=500, dry_sequence_breakers=["\n", "#"], logit_bias={3: -1.5},
                    custom_token_bans=[1, 2], sampler_priority=["xtc", "min_p"], banned_strings=['say "hi"'])
    params = ParameterControls(None, controls_for(Preset()), None)
    values = []
    for name in params.controls:
        shown = control_value(name, getattr(preset, name))
        values.append(shown.value if isinstance(shown, gr.Slider) else shown)
    assert params.preset_from(values) == preset
    wide = control_value("top_k", 500)
    assert wide.maximum == 500  # a preset beyond the slider's usual end widens it


def test_bad_text_in_a_box_names_the_key():
    params = ParameterControls(None, controls_for(Preset()), None)
    values = [field_value for field_value in (getattr(Preset(), n) for n in params.controls)]
    # (an unknown sampler name is no longer an error: it is skipped, as text-generation-webui does)
    values[list(params.controls).index("custom_token_bans")] = "13, warp"
    with pytest.raises(Exception, match="custom_token_bans"):
        params.preset_from(values)


class _PartialBackend:
    """Stands in for a loaded GGUF model: the registry says which samplers llama.cpp applies."""
    name = "tiny.gguf"
    loader = "llama.cpp"

    def unload(self) -> None:
        pass


def test_samplers_the_backend_lacks_are_marked(make_app):
    app = make_app()
    assert unsupported_keys(app) == set()  # no model: nothing to mark
    app.models.adopt(_PartialBackend())
    off = unsupported_keys(app)
    assert "xtc_probability" in off and "dry_multiplier" in off and "temperature" not in off and "min_p" not in off
    controls = create_controls(app).controls
    assert "not supported by llama.cpp" in controls["dry_multiplier"].label
    assert not controls["dry_multiplier"].interactive
    assert controls["temperature"].label == "temperature"
    app.models.unload()


def test_transformers_backend_supports_every_key(micro_backend):
    assert registry.supported_samplers(micro_backend) is None  # None: every Preset key


def test_per_model_default_preset(tmp_path, make_app):
    store = PresetStore(tmp_path / "presets", tmp_path / "user_data" / "model_presets.yaml")
    store.save("Cool", Preset(temperature=0.2))
    store.set_model_default("parlour-micro", "Cool")
    assert store.model_default("parlour-micro") == "Cool" and store.model_default("other") is None
    with pytest.raises(PresetError, match="bad preset name"):
        store.set_model_default("parlour-micro", "../x")
    store.delete("Cool")
    assert store.model_default("parlour-micro") is None  # a deleted preset is forgotten, not an error

    app = make_app(model="parlour-micro")
    app.presets.set_model_default("parlour-micro", "Top-P")
    assert app.start_preset_name() == "Top-P" and app.start_preset() == app.presets.load("Top-P")
    assert make_app(model="parlour-micro-gpt2").start_preset_name() == "Default"


def test_loading_a_model_chooses_its_remembered_preset(make_app):
    from modules.ui.parameters import model_default_choice

    app = make_app()
    assert model_default_choice(app) is None
    app.presets.set_model_default("parlour-micro-gpt2", "Creative")
    app.models.load("parlour-micro")
    assert model_default_choice(app) is None
    app.models.load("parlour-micro-gpt2")
    assert model_default_choice(app) == "Creative"
