"""The built-in extensions on the micro Llama, through the real pipeline."""

from __future__ import annotations

import re
import textwrap

import torch

from modules.generation import GenerationRequest
from modules.presets import Preset

HI = [{"role": "user", "content": "hi"}]
GREEDY = Preset(temperature=0.0, max_new_tokens=10, ban_eos_token=True)


def final(app, **request):
    return list(app.pipeline.stream(GenerationRequest(preset=request.pop("preset", GREEDY), **request)))[-1]


def chat_prompt(backend, messages):
    return backend.chat_template.render(messages, add_generation_prompt=True, **backend.template_vars())


def test_character_bias_starts_every_reply_hidden(make_app):
    app = make_app(extensions=["character_bias"], extension_params={"character_bias-bias string": "*waves*"})
    backend = app.models.load("parlour-micro")
    prompt = app.pipeline.prepare(backend, GenerationRequest(preset=GREEDY, messages=HI)).prompt
    assert prompt == chat_prompt(backend, HI) + "*waves* "
    update = final(app, messages=HI)
    assert update.prompt_tokens == len(backend.tokenize(prompt))
    assert "*waves*" not in update.text
    app.extensions.loaded["character_bias"].params["activate"] = False   # what its checkbox does
    assert app.pipeline.prepare(backend, GenerationRequest(preset=GREEDY, messages=HI)).prompt == chat_prompt(backend, HI)


def test_long_replies_keeps_the_turn_going_until_min_length(make_app, tmp_path):
    # A user extension that makes the end-of-turn token certain: replies end after one token...
    folder = tmp_path / "user_data" / "extensions" / "always_end"
    folder.mkdir(parents=True)
    (folder / "script.py").write_text(textwrap.dedent("""
        class AlwaysEnd:
            def __init__(self, eos):
                self.eos = list(eos)
            def __call__(self, input_ids, scores):
                out = scores.clone()
                out[:, self.eos] = 1e9
                return out
        def logits_processor_modifier(processor_list, input_ids):
            processor_list.append(AlwaysEnd(processor_list.eos_token_ids))
        """))
    preset = Preset(temperature=0.0, max_new_tokens=50)
    app = make_app(extensions=["always_end"])
    app.models.load("parlour-micro")
    short = final(app, prompt="x", preset=preset)
    assert short.tokens == 1 and short.finish_reason == "stop"
    # ... and long_replies, after it in load order, holds the end off for min_length tokens.
    app = make_app(extensions=["always_end", "long_replies"], extension_params={"long_replies-min_length": 7})
    app.models.load("parlour-micro")
    long = final(app, prompt="x", preset=preset)
    assert long.tokens == 8 and long.finish_reason == "stop"


def test_long_replies_processor_lowers_only_end_tokens_and_only_early():
    from importlib.util import module_from_spec, spec_from_file_location

    from tests.conftest import ROOT

    spec = spec_from_file_location("long_replies_script", ROOT / "extensions" / "long_replies" / "script.py")
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    processor = module.DiscourageEarlyEnd(eos_token_ids=[2], prompt_length=3, min_length=2, penalty=5.0)
    scores = torch.zeros(1, 4)
    early = processor(torch.tensor([[1, 1, 1, 9]]), scores)
    assert early.tolist() == [[0.0, 0.0, -5.0, 0.0]] and scores.tolist() == [[0.0] * 4]   # no in-place change
    assert processor(torch.tensor([[1, 1, 1, 9, 9]]), scores) is scores


def test_token_stats_footer_matches_the_pipeline_numbers(make_app):
    app = make_app(extensions=["token_stats"])
    app.models.load("parlour-micro")
    update = final(app, messages=HI)
    match = re.fullmatch(r"(\d+) tokens · ([\d.]+) tok/s · first token (\d+) ms · prompt (\d+) tokens", update.footer)
    assert match, update.footer
    assert int(match[1]) == update.tokens == 10 and int(match[4]) == update.prompt_tokens
    assert float(match[2]) > 0
    assert int(match[3]) == round(update.first_token_seconds * 1000)


def test_example_changes_nothing_until_a_parameter_turns_a_hook_on(make_app):
    plain = make_app()
    plain.models.load("parlour-micro")
    app = make_app(extensions=["example"])
    app.models.load("parlour-micro")
    assert final(app, messages=HI).text == final(plain, messages=HI).text
    assert final(app, prompt="def").text == final(plain, prompt="def").text
    backend = plain.models.current()
    plain_ids = backend.tokenize(final(plain, prompt="DEF").text)
    app = make_app(extensions=["example"], extension_params={
        "example-uppercase_input": True, "example-reply_suffix": " (example)", "example-footer": "{tokens} tok",
        "example-ban_token_ids": [str(plain_ids[0])]})
    app.models.load("parlour-micro")
    update = final(app, prompt="def")
    assert update.prompt_tokens == len(backend.tokenize("DEF"))
    assert update.text == update.raw_text + " (example)" and update.footer == "10 tok"
    assert plain_ids[0] not in backend.tokenize(update.raw_text)   # setup() made the ids ints; the ban held


def test_example_echo_replaces_the_model(make_app):
    app = make_app(extensions=["example"], extension_params={"example-echo": True})
    app.models.load("parlour-micro")
    assert final(app, messages=[{"role": "user", "content": "say these words"}]).text == "say these words"


def test_every_builtin_loads_and_builds_its_ui(make_app):
    from modules import ui
    from modules.app import BUILTIN_EXTENSIONS

    names = sorted(p.name for p in BUILTIN_EXTENSIONS.iterdir() if (p / "script.py").is_file())
    assert names == ["character_bias", "documents", "example", "long_replies", "token_stats"]
    app = make_app(extensions=names)
    assert list(app.extensions.loaded) == names and not app.extensions.load_errors
    blocks = ui.build(app)
    ids = {getattr(b, "elem_id", None) for b in blocks.blocks.values()}
    assert {"extension-tab-example", "extension-tab-documents", "extension-character_bias",
            "extension-long_replies", "documents-files"} <= ids
    assert not app.extensions.failures
