"""The "Constrain output" group's logic: an editor's text reaches the Preset control only when it checks out."""

import gradio as gr

from modules.presets import CONSTRAINT_KEYS, Preset
from modules.ui.constraints import apply_text
from modules.ui.parameters import _control, create_controls


def test_constraint_keys_are_hidden_controls_read_like_any_other(make_app):
    for key in CONSTRAINT_KEYS:
        control = _control(key, Preset.model_fields[key], "")
        assert isinstance(control, gr.Textbox) and control.visible is False
    params = create_controls(make_app())
    values = [getattr(Preset(), name) for name in params.controls]
    values[list(params.controls).index("regex")] = "[0-9]+"
    assert params.preset_from(values).regex == "[0-9]+"  # Chat and Notebook build their preset from these


def test_good_text_applies_bad_text_keeps_the_last_good_setting(make_app):
    app = make_app()  # no model loaded: the constraint is compiled model-free
    value, note = apply_text(app, "json_schema", '{"type": "object"}', {})
    assert value == '{"type": "object"}' and note.startswith("✓ in use: the reply follows this JSON schema")
    value, note = apply_text(app, "json_schema", '{"type": "objekt"}', {"json_schema": '{"type": "object"}'})
    assert value is not None and not isinstance(value, str)  # a skip: the control keeps its value
    assert "invalid JSON schema at /type" in note and note.endswith("the last good setting stays in use")
    value, note = apply_text(app, "regex", "[0-9]+", {"json_schema": '{"type": "object"}'})
    assert not isinstance(value, str) and "the JSON schema is in use: clear it first" in note
    assert apply_text(app, "json_schema", "", {"json_schema": '{"type": "object"}'}) == ("", "")  # cleared


def test_the_loaded_loader_decides_what_is_supported(make_app):
    app = make_app()

    class GbnfOnly:
        name = "x.gguf"
        loader = "llama.cpp"
        constraint_kinds = frozenset({"gbnf", "json_schema"})

    app.models._backend = GbnfOnly()
    try:
        _, note = apply_text(app, "regex", "[0-9]+", {})
        assert "the llama.cpp loader does not support regex constraints" in note
    finally:
        app.models._backend = None


def test_the_page_builds_with_the_group(make_app):
    from modules.ui import build

    blocks = build(make_app())
    ids = {getattr(block, "elem_id", None) for block in blocks.blocks.values()}
    assert {"grammar-file", "constraint-grammar_string", "constraint-json_schema", "constraint-regex",
            "constraint-grammar_string-status", "param-grammar_string"} <= ids
