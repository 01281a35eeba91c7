"""Every Preset key in every form text-generation-webui and its clients write it, read the same way by a
preset file and by the API (one set of converters, modules/presets.py), plus text-generation-webui's own
preset files and the request body SillyTavern's "Text Generation WebUI" connector sends."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from modules.api.openai import build_preset
from modules.api.schemas import ChatCompletionRequest, CompletionRequest
from modules.presets import DEFAULT_PRIORITY, Preset, PresetStore, field_text_kind, parse_preset
from tests.conftest import ROOT

TGW_PRESETS = ROOT / "tests" / "fixtures" / "tgw-presets"
#: values chosen for keys whose neighbours constrain them (cross-key rules of Preset)
EXAMPLES: dict[str, Any] = {"mirostat_mode": 2, "dynatemp_low": 0.5, "seed": 42, "truncation_length": 4096}


def _limits(name: str) -> tuple[Any, Any]:
    lo = hi = None
    for meta in Preset.model_fields[name].metadata:
        lo = getattr(meta, "ge", lo)
        hi = getattr(meta, "le", hi)
    return lo, hi


def forms(name: str) -> list[tuple[Any, Any]]:
    """(written form, value it must read as) for one key: each form a preset file, text-generation-webui's
    API or one of its clients uses. A key of a kind not listed here fails the meta-test below."""
    field = Preset.model_fields[name]
    kind, annotation, default = field_text_kind(name), field.annotation, field.default
    if kind == "quoted":
        value = ["\n", ":", "\"", "*"] if default != ["\n", ":", "\"", "*"] else ["\n", "#"]
        quoted = ", ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"' for s in value)
        return [(value, value), (quoted, value), ("[" + quoted + "]", value), (str(value), value), ("", [])]
    if kind == "ids":
        return [([13, 198], [13, 198]), ("13, 198", [13, 198]), ("13,198\n", [13, 198]), ("[13, 198]", [13, 198]),
                (["13", "198"], [13, 198]), ("", [])]
    if kind == "json":
        return [({13: -5.0}, {13: -5.0}), ({"13": -5}, {13: -5.0}), ('{"13": -5}', {13: -5.0}),
                ([[13, -5]], {13: -5.0}), ("", {})]
    if kind == "lines":
        order = ["min_p", "adaptive_p", "temperature"]
        full = order + [n for n in DEFAULT_PRIORITY if n not in order]
        return [(order, full), ("\n".join(order), full), (", ".join(order), full), (str(order), full),
                ("min_p\nadaptive_p\ntemperature\n", full)]
    if annotation is bool:
        return [(not default, not default), (str(not default).lower(), not default), (int(not default), not default)]
    if annotation in (int, float):
        lo, hi = _limits(name)
        value = EXAMPLES.get(name, default + 1 if hi is None or default + 1 <= hi else lo)
        value = annotation(value)
        written = [(value, value), (str(value), value)]  # 40 and "40", 0.5 and "0.5"
        if annotation is int:
            written.append((float(value), value))  # 40.0
        elif value.is_integer():
            written.append((int(value), value))  # a float key written as a whole number: 2
        return written
    if name == "json_schema":  # a schema: a mapping (YAML, the API's JSON) or its JSON text
        return [({"type": "object"}, '{"type": "object"}'), ('{"type": "object"}', '{"type": "object"}'), ("", "")]
    if name in ("grammar_string", "regex"):  # a grammar or a regex is text
        return [("root ::= [0-9]+", "root ::= [0-9]+"), ("", "")]
    if annotation is str:
        return [("a text", "a text"), ("", "")]
    raise AssertionError(f"{name}: no written forms known for {annotation!r} — add them to forms()")


@pytest.mark.parametrize("name", list(Preset.model_fields))
def test_every_key_reads_every_written_form_in_preset_files_and_the_api(name):
    for written, value in forms(name):
        from_file = parse_preset(yaml.safe_dump({name: written}), "forms")
        assert getattr(from_file, name) == value, (name, written, "preset file")
        body = CompletionRequest(prompt="x", **{name: written})
        preset, _ = build_preset(SimpleNamespace(presets=None), body, None)
        assert getattr(preset, name) == value, (name, written, "API")
        chat = ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], **{name: written})
        assert getattr(build_preset(SimpleNamespace(presets=None), chat, None)[0], name) == value, (name, written)


def test_the_api_fields_are_the_preset_fields_with_their_converters():
    from modules.api.schemas import PresetFields

    for name, field in Preset.model_fields.items():
        assert PresetFields.model_fields[name].metadata == field.metadata, name
        assert PresetFields.model_fields[name].default is None  # "not given"


def test_bad_forms_are_refused_the_same_way_by_files_and_the_api():
    for name, written in [("custom_token_bans", "13, x"), ("dry_sequence_breakers", "\\n, :"),
                          ("logit_bias", "{13: oops}"), ("temperature", "hot"), ("top_k", "4.5")]:
        with pytest.raises(ValueError, match=name):
            parse_preset(yaml.safe_dump({name: written}), "bad")
        with pytest.raises(ValueError, match=name):
            CompletionRequest(prompt="x", **{name: written})


# -- text-generation-webui's own preset files ----------------------------------------------------------

def test_text_generation_webui_presets_load_as_they_are():
    store = PresetStore(TGW_PRESETS)
    expected = {
        "Creative": {"min_p": 0.02, "xtc_probability": 0.5},
        "Deterministic": {"do_sample": False, "top_k": 1},
        "Top-P": {"top_p": 0.95},
        "Instruct": {"min_p": 0.2},
        "min_p": {"min_p": 0.05},
        "Qwen3 - Thinking": {"temperature": 0.6, "top_p": 0.95, "top_k": 20},
        "Null preset": {},
        "Contrastive Search": {"do_sample": False, "top_k": 4},  # penalty_alpha: ignored, with a warning
    }
    for name, changed in expected.items():
        assert store.load(name).changed() == changed, name
    assert store.problems() == {}


def test_every_key_of_the_current_default_preset_loads():
    # text-generation-webui's default_preset_values, every key at its default: only its sampler order
    # (which puts top_n_sigma and encoder_repetition_penalty elsewhere) differs from Parlour's neutral preset
    preset = PresetStore(TGW_PRESETS).load("Every key at default")
    assert set(preset.changed()) == {"sampler_priority"}
    assert preset.sampler_priority[:6] == ["repetition_penalty", "presence_penalty", "frequency_penalty", "dry",
                                           "top_n_sigma", "temperature"]
    assert preset.sampler_priority.index("adaptive_p") == preset.sampler_priority.index("min_p") + 1
    text = (TGW_PRESETS / "Every key at default.yaml").read_text()
    assert {k for k in yaml.safe_load(text)} - set(Preset.model_fields) == {"penalty_alpha"}


def test_a_preset_saved_by_text_generation_webui_with_adaptive_p_loads():
    preset = PresetStore(TGW_PRESETS).load("Saved from the UI")
    assert (preset.adaptive_target, preset.adaptive_decay, preset.temperature_last) == (0.35, 0.8, True)
    assert preset.dry_sequence_breakers == ["\n", ":", "\"", "*", "#"]
    assert preset.sampler_priority[-1] == "temperature"
    from modules.sampling import build_chain

    assert "adaptive_p" in [name for name, _ in build_chain(preset)]


def test_contrastive_search_is_a_warning_not_silence(caplog):
    with caplog.at_level(logging.WARNING, logger="modules.presets"):
        PresetStore(TGW_PRESETS).load("Contrastive Search")
    assert "penalty_alpha" in caplog.text and "contrastive search is not supported" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modules.presets"):
        PresetStore(TGW_PRESETS).load("Every key at default")  # penalty_alpha: 0 is off: nothing to say
    assert "penalty_alpha" not in caplog.text


# -- SillyTavern's "Text Completion -> Text Generation WebUI" request body --------------------------------

def sillytavern_body(**changes: Any) -> dict[str, Any]:
    """The body SillyTavern 1.19's connector sends for text-generation-webui (public/scripts/
    textgen-settings.js createTextGenGenerationData, with its default settings; undefined values left
    out, as JSON.stringify does). Written out here from that source's facts."""
    order = ["repetition_penalty", "presence_penalty", "frequency_penalty", "dry", "temperature",
             "dynamic_temperature", "quadratic_sampling", "top_n_sigma", "top_k", "top_p", "typical_p",
             "epsilon_cutoff", "eta_cutoff", "tfs", "top_a", "min_p", "adaptive_p", "mirostat", "xtc",
             "encoder_repetition_penalty", "no_repeat_ngram"]
    body = {
        "prompt": "You are a helpful assistant.\nUser: Hello\nAssistant:", "model": "parlour-micro",
        "max_new_tokens": 16, "max_tokens": 16, "logprobs": 10, "temperature": 0.7, "top_p": 0.5, "typical_p": 1,
        "typical": 1, "min_p": 0, "repetition_penalty": 1.2, "frequency_penalty": 0, "presence_penalty": 0,
        "top_k": 40, "skew": 0, "min_length": 0, "min_tokens": 0, "num_beams": 1, "length_penalty": 1,
        "early_stopping": False, "add_bos_token": True, "smoothing_factor": 0, "smoothing_curve": 1,
        "dry_allowed_length": 2, "dry_multiplier": 0, "dry_base": 1.75,
        "dry_sequence_breakers": '["\\n", ":", "\\"", "*"]', "dry_penalty_last_n": 0, "max_tokens_second": 0,
        "sampler_priority": order, "stopping_strings": ["\nUser:"], "stop": ["\nUser:"],
        "truncation_length": 4096, "ban_eos_token": False, "skip_special_tokens": True,
        "include_reasoning": True, "top_a": 0, "tfs": 1, "epsilon_cutoff": 0, "eta_cutoff": 0,
        "mirostat_mode": 0, "mirostat_tau": 5, "mirostat_eta": 0.1, "custom_token_bans": "",
        "banned_strings": [], "api_type": "ooba", "api_server": "http://127.0.0.1:5000", "xtc_threshold": 0.1,
        "xtc_probability": 0, "nsigma": 0, "top_n_sigma": 0, "min_keep": 0, "adaptive_target": -0.01,
        "adaptive_decay": 0.9, "rep_pen": 1.2, "rep_pen_range": 0, "repetition_penalty_range": 0,
        "encoder_repetition_penalty": 1, "no_repeat_ngram_size": 0, "penalty_alpha": 0, "temperature_last": True,
        "do_sample": True, "guidance_scale": 1, "negative_prompt": "", "repeat_penalty": 1.2, "repeat_last_n": 0,
        "n_predict": 16, "num_predict": 16, "num_ctx": 4096, "mirostat": 0, "ignore_eos": False, "n_probs": 10,
        "rep_pen_slope": 1, "stream": True,
    }
    return {**body, **changes}


def test_the_sillytavern_body_is_read_with_its_string_forms():
    body = CompletionRequest(**sillytavern_body())
    preset, _ = build_preset(SimpleNamespace(presets=None), body, body.max_tokens)
    assert preset.dry_sequence_breakers == ["\n", ":", "\"", "*"]
    assert preset.custom_token_bans == [] and preset.truncation_length == 4096
    assert preset.sampler_priority[:5] == ["repetition_penalty", "presence_penalty", "frequency_penalty", "dry",
                                           "temperature"]
    assert (preset.temperature, preset.top_k, preset.repetition_penalty, preset.max_new_tokens) == (0.7, 40, 1.2, 16)
    assert preset.adaptive_target == -0.01  # SillyTavern's "off"
    ignored = body.ignored_fields()
    assert {"api_type", "nsigma", "penalty_alpha", "rep_pen"} <= set(ignored) and "top_k" not in ignored
    # older SillyTavern settings keep the order as one newline-separated string, and bans as "1, 2"
    older = CompletionRequest(**sillytavern_body(sampler_priority="\n".join(["temperature", "min_p"]),
                                                 custom_token_bans="13, 198"))
    assert older.sampler_priority[:2] == ["temperature", "min_p"] and older.custom_token_bans == [13, 198]


def test_sillytavern_presets_sampler_orders_are_all_known():
    # the orders SillyTavern ships (OOBA_DEFAULT_ORDER and its presets) name only stages Parlour has
    body = CompletionRequest(**sillytavern_body())
    assert set(body.sampler_priority) == set(DEFAULT_PRIORITY)
