"""Tool calls on the llama.cpp loader (the tiny GGUF the tests write): the same parsers read its text, and a
forced call is the bare JSON call object under llama.cpp's grammar sampler (JSON schema constraints only)."""

from __future__ import annotations

import json

import jsonschema

from modules.chat import PromptOptions, request_for
from modules.presets import Preset
from tests.gguf_writer import write_gguf

ADD = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": [1, 2, 3]}}, "required": ["a", "b"]}
TOOLS = ({"type": "function", "function": {"name": "add", "parameters": ADD}},
         {"type": "function", "function": {"name": "noop"}})


def test_a_forced_call_on_llamacpp_validates(models_dir, make_app, tmp_path):
    (tmp_path / "gguf").mkdir()
    write_gguf(models_dir / "parlour-micro", tmp_path / "gguf" / "micro.f32.gguf")
    app = make_app(models_dir=tmp_path / "gguf")
    app.models.load("micro.f32.gguf", options={"n_ctx": 1024})
    for seed, choice in enumerate(["required", {"type": "function", "function": {"name": "add"}}]):
        request = request_for([{"role": "user", "content": "Add 1 and 2."}], PromptOptions(mode="instruct"),
                              Preset(seed=seed, max_new_tokens=200))
        request.tools, request.tool_choice = TOOLS, choice
        final = list(app.pipeline.stream(request))[-1]
        assert final.finish_reason == "tool_calls", final.text
        (call,) = final.tool_calls
        if choice != "required":
            assert call.name == "add"
        jsonschema.validate(json.loads(call.arguments), ADD if call.name == "add" else {"type": "object"})
        assert final.text == ""
