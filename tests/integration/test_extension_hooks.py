"""Every extension hook, called through the real pipeline on the micro Llama (one `test_hook_<name>` each;
tests/unit/test_extension_meta.py fails if a hook has none), plus a text-generation-webui style fixture
extension whose hooks must all fire, in the right order, with the right values."""

from __future__ import annotations

import shutil
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from modules.generation import GenerationRequest
from modules.presets import Preset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "extensions"
GREEDY = Preset(temperature=0.0, max_new_tokens=10, ban_eos_token=True)
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture()
def ext_app(make_app, tmp_path):
    """An App with the micro Llama loaded and the given user extensions (name -> script text) enabled."""

    def _make(scripts: dict[str, str], enabled: list[str] | None = None, load_model: bool = True, **settings):
        root = tmp_path / "user_data" / "extensions"
        for name, code in scripts.items():
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / name / "script.py").write_text(textwrap.dedent(code))
        app = make_app(extensions=enabled if enabled is not None else list(scripts), **settings)
        if load_model:
            app.models.load("parlour-micro")
        return app

    return _make


def final(app, **request) -> object:
    updates = list(app.pipeline.stream(GenerationRequest(preset=request.pop("preset", GREEDY), **request)))
    return updates[-1]


def greedy_ids(backend, ids: list[int], n: int = 10) -> str:
    tensor = torch.tensor([ids])
    eos = list(backend.eos_token_ids)
    with torch.inference_mode():
        out = backend.model.generate(tensor, attention_mask=torch.ones_like(tensor), do_sample=False,
                                     max_new_tokens=n, suppress_tokens=eos, eos_token_id=eos, pad_token_id=eos[0])
    return backend.detokenize(out[0, tensor.shape[1]:].tolist())


def chat_prompt(backend, messages) -> str:
    return backend.chat_template.render(messages, add_generation_prompt=True, **backend.template_vars())


# ---- one test per hook -----------------------------------------------------------------------------

def test_hook_setup(ext_app):
    app = ext_app({"s": """
        params = {"suffix": None}
        def setup():
            params["suffix"] = "!ready"
        def input_modifier(string, state, is_chat=False):
            return string + params["suffix"]
        """})
    backend = app.models.current()
    assert final(app, prompt="abc").prompt_tokens == len(backend.tokenize("abc!ready"))


def test_hook_setup_failure_disables_the_extension_with_a_message(ext_app):
    app = ext_app({"broken": "def setup():\n    raise RuntimeError('no config file')\n"
                             "def input_modifier(string, state, is_chat=False):\n    return 'never'\n"})
    assert "broken" not in app.extensions.loaded
    assert "no config file" in app.extensions.load_errors["broken"]
    assert "no config file" in app.extensions.status_markdown()
    assert final(app, prompt="abc").prompt_tokens == len(app.models.current().tokenize("abc"))


def test_hook_ui(ext_app):
    from modules import ui

    app = ext_app({"tabbed": """
        import gradio as gr
        params = {"display_name": "Tabbed one", "is_tab": True}
        def ui():
            gr.Markdown("in a tab", elem_id="tabbed-md")
        """, "blocky": """
        import gradio as gr
        def ui():
            gr.Textbox(label="in the block", elem_id="blocky-box")
        """, "crashy": """
        import gradio as gr
        def ui():
            gr.Markdown("before the crash", elem_id="crashy-md")
            raise ValueError("ui exploded")
        """}, load_model=False)
    blocks = ui.build(app)
    by_id = {getattr(b, "elem_id", None): b for b in blocks.blocks.values()}
    assert "tabbed-md" in by_id and "blocky-box" in by_id and "crashy-md" in by_id
    assert by_id["extension-tab-tabbed"].label == "Tabbed one"      # is_tab: its own tab
    assert "extension-blocky" in by_id and "extensions-block" in by_id  # the shared block
    assert "ui exploded" in " ".join(app.extensions.failures["crashy"])


def _served_config(app) -> str:
    import gradio as gr
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules import ui

    api = FastAPI()
    gr.mount_gradio_app(api, ui.build(app), path="", footer_links=[], **ui.launch_kwargs(app))
    return TestClient(api).get("/config").text


def test_hook_custom_css(ext_app):
    app = ext_app({"styled": "def custom_css():\n    return '.styled-ext { color: teal; }'\n",
                   "badcss": "def custom_css():\n    return 42\n"}, load_model=False)
    config = _served_config(app)
    assert ".styled-ext { color: teal; }" in config
    assert "returned int" in " ".join(app.extensions.failures["badcss"])


def test_hook_custom_js(ext_app):
    app = ext_app({"scripted": "def custom_js():\n    return 'window.scriptedExt = 1;'\n"}, load_model=False)
    config = _served_config(app)
    assert "window.scriptedExt = 1;" in config
    assert "window.parlour.applyTheme()" in config  # Parlour's own page JS (the theme) still runs


def test_hook_state_modifier(ext_app):
    app = ext_app({"st": """
        seen = []
        def state_modifier(state):
            seen.append((state["mode"], state.get("name2")))
            state["max_new_tokens"] = 4
            return state
        """})
    update = final(app, messages=HI, state={"name2": "Parlour"})
    assert update.tokens == 4 and update.finish_reason == "length"
    # `mode` is the chat's mode as text-generation-webui sets it; a `messages` request is instruct mode
    assert app.extensions.loaded["st"].module.seen == [("instruct", "Parlour")]


def test_hook_chat_input_modifier(ext_app):
    app = ext_app({"ci": """
        def chat_input_modifier(text, visible_text, state):
            return "Please answer: " + text, "shown: " + visible_text
        """})
    backend = app.models.current()
    expected = chat_prompt(backend, [{"role": "user", "content": "Please answer: hi"}])
    assert app.pipeline.prepare(backend, GenerationRequest(preset=GREEDY, messages=HI)).prompt == expected
    assert final(app, messages=HI).prompt_tokens == len(backend.tokenize(expected))
    # the chat code calls it directly to get the visible text too
    assert app.extensions.chat_input("hi", "hi", {}) == ("Please answer: hi", "shown: hi")
    # a caller that already applied it says so, and the pipeline does not apply it twice
    request = GenerationRequest(preset=GREEDY, messages=HI, apply_input_hooks=False)
    assert app.pipeline.prepare(backend, request).prompt == chat_prompt(backend, HI)


def test_hook_input_modifier(ext_app):
    app = ext_app({"im": """
        def input_modifier(string, state, is_chat=False):
            return string + (" (chat)" if is_chat else " (notebook)")
        """})
    backend = app.models.current()
    assert final(app, prompt="def f():").prompt_tokens == len(backend.tokenize("def f(): (notebook)"))
    expected = chat_prompt(backend, [{"role": "user", "content": "hi (chat)"}])
    assert final(app, messages=HI).prompt_tokens == len(backend.tokenize(expected))


def test_hook_history_modifier(ext_app):
    app = ext_app({"hm": """
        def history_modifier(history):
            return {"internal": history["internal"][-1:], "visible": history["visible"][-1:]}
        """})
    backend = app.models.current()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "first answer"}, {"role": "user", "content": "second"}]
    prompt = app.pipeline.prepare(backend, GenerationRequest(preset=GREEDY, messages=messages)).prompt
    assert prompt == chat_prompt(backend, [messages[0], messages[3]])
    assert final(app, messages=messages).prompt_tokens == len(backend.tokenize(prompt))


def test_hook_custom_generate_chat_prompt(ext_app):
    app = ext_app({"cp": """
        def custom_generate_chat_prompt(user_input, state, **kwargs):
            turns = "".join(f"Q: {u}\\nA: {b}\\n" for u, b in kwargs["history"]["internal"])
            return f"{turns}Q: {user_input}\\nA:"
        """, "second": "def custom_generate_chat_prompt(user_input, state, **kwargs):\n    return 'loses'\n"})
    backend = app.models.current()
    messages = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "uno"},
                {"role": "user", "content": "two"}]
    expected = "Q: one\nA: uno\nQ: two\nA:"  # the first extension wins; the history excludes the new message
    assert app.pipeline.prepare(backend, GenerationRequest(preset=GREEDY, messages=messages)).prompt == expected
    update = final(app, messages=messages)
    assert update.prompt_tokens == len(backend.tokenize(expected))
    assert update.text == greedy_ids(backend, backend.tokenize(expected))


def test_hook_bot_prefix_modifier(ext_app):
    app = ext_app({"bp": "def bot_prefix_modifier(string, state):\n    return string + 'Certainly!'\n"})
    backend = app.models.current()
    prompt = app.pipeline.prepare(backend, GenerationRequest(preset=GREEDY, messages=HI)).prompt
    assert prompt == chat_prompt(backend, HI) + "Certainly!"
    update = final(app, messages=HI)
    assert update.text == greedy_ids(backend, backend.tokenize(prompt))
    assert not update.text.startswith("Certainly!")  # hidden: part of the prompt, not of the reply


def test_hook_custom_tokenized_length(ext_app):
    app = ext_app({"tl": "def custom_tokenized_length(prompt):\n    return 4242\n"})
    assert final(app, prompt="abc").prompt_tokens == 4242


def test_hook_tokenizer_modifier(ext_app):
    app = ext_app({"tm": """
        import torch
        def tokenizer_modifier(state, prompt, input_ids, input_embeds):
            extra = torch.tensor([[11, 12, 13]], dtype=input_ids.dtype)
            return prompt, torch.cat([input_ids, extra], dim=1), input_embeds
        """})
    backend = app.models.current()
    update = final(app, prompt="import os")
    assert update.text == greedy_ids(backend, backend.tokenize("import os") + [11, 12, 13])
    assert update.text != greedy_ids(backend, backend.tokenize("import os"))


def test_hook_logits_processor_modifier(ext_app):
    app = ext_app({"lp": """
        class OnlyToken:
            def __init__(self, token):
                self.token = token
            def __call__(self, input_ids, scores):
                out = scores.clone()
                out[:, :] = -float("inf")
                out[:, self.token] = 0.0
                return out
        def logits_processor_modifier(processor_list, input_ids):
            processor_list.append(OnlyToken(42))
        """})
    backend = app.models.current()
    update = final(app, prompt="x")
    assert update.text == backend.detokenize([42] * 10)


def test_hook_custom_generate_reply(ext_app):
    app = ext_app({"cr": """
        seen = []
        def custom_generate_reply(question, original_question, seed, state, stopping_strings, is_chat=False):
            seen.append((original_question, is_chat, question.endswith("assistant\\n")))
            yield "Hello"
            yield "Hello from"
            yield "Hello from the extension"
        """})
    update = final(app, messages=HI)
    assert update.text == "Hello from the extension" and update.finish_reason == "stop"
    assert update.tokens == sum(len(app.models.current().tokenize(t)) for t in ["Hello", " from", " the extension"])
    assert app.extensions.loaded["cr"].module.seen == [("hi", True, True)]


def test_hook_output_modifier(ext_app):
    app = ext_app({"om": "def output_modifier(string, state, is_chat=False):\n"
                         "    return string.upper() + (' [chat]' if is_chat else ' [notebook]')\n"})
    backend = app.models.current()
    raw = greedy_ids(backend, backend.tokenize(chat_prompt(backend, HI)))
    update = final(app, messages=HI)
    assert update.raw_text == raw and update.text == raw.upper() + " [chat]"
    assert final(app, prompt="abc").text.endswith(" [notebook]")


def test_hook_reply_footer(ext_app):
    app = ext_app({"rf": """
        def reply_footer(stats, state):
            return f"<b>{stats['tokens']}</b> tokens<script>alert(1)</script><img src=x onerror=alert(2)>"
        """})
    update = final(app, prompt="abc")
    assert update.footer.startswith("<b>10</b> tokens")
    assert "<script" not in update.footer and "onerror" not in update.footer


# ---- a text-generation-webui extension, unmodified ----------------------------------------------

@pytest.fixture()
def recorder(ext_app, tmp_path):
    shutil.copytree(FIXTURES / "tgw_recorder", tmp_path / "user_data" / "extensions" / "tgw_recorder")
    app = ext_app({}, enabled=["tgw_recorder"])
    return app, app.extensions.loaded["tgw_recorder"].module.params


def test_tgw_extension_hooks_fire_in_order_with_the_right_values(recorder):
    app, params = recorder
    backend = app.models.current()
    messages = [{"role": "user", "content": "old"}, {"role": "assistant", "content": "reply"},
                {"role": "user", "content": "new"}]
    update = final(app, messages=messages, preset=Preset(max_new_tokens=50), state={"name1": "You"})
    calls = params["calls"]
    assert [c[0] for c in calls] == [
        "setup", "state_modifier", "chat_input_modifier", "input_modifier", "history_modifier",
        "custom_generate_chat_prompt", "bot_prefix_modifier", "custom_tokenized_length",
        "custom_generate_reply", "tokenizer_modifier", "logits_processor_modifier", "output_modifier",
        "reply_footer"]
    by = {c[0]: c for c in calls}
    assert by["state_modifier"][1:] == ("instruct", "You")  # the chat's mode, as text-generation-webui sets it
    assert by["chat_input_modifier"][1:] == ("new", "new", 6)          # the modified state reaches later hooks
    assert by["input_modifier"][1:] == ("[ci]new", True)              # chained after chat_input_modifier
    assert by["history_modifier"][1] == [["old", "reply"], ["[ci]new [in]", ""]]
    assert by["custom_generate_chat_prompt"][1:] == ("[ci]new [in]", [["old", "reply"]], False)
    expected_prompt = chat_prompt(backend, messages[:2] + [{"role": "user", "content": "[ci]new [in]"}]) + "[bp]"
    assert by["bot_prefix_modifier"][1] == "<|im_start|>assistant\n"
    assert by["custom_tokenized_length"][1] == expected_prompt
    assert by["custom_generate_reply"][1:] == (expected_prompt, "[ci]new [in]", True)
    assert by["tokenizer_modifier"][1:] == (expected_prompt, len(backend.tokenize(expected_prompt)), None)
    assert by["output_modifier"][1:] == (update.raw_text, True)
    assert update.tokens == 6 and update.text == update.raw_text + " [out]"   # state_modifier: 6 tokens
    assert update.footer == "6 tokens"
    assert update.raw_text == greedy_ids(backend, backend.tokenize(expected_prompt), 6)


def test_tgw_extension_custom_hooks_take_over(recorder):
    app, params = recorder
    params.update(custom_prompt=True, custom_reply=True)
    update = final(app, messages=HI)
    assert update.text == "reply! [out]"
    names = [c[0] for c in params["calls"]]
    assert "bot_prefix_modifier" not in names     # the custom prompt replaced the template
    assert "tokenizer_modifier" not in names      # the custom reply replaced the model
    assert [c for c in params["calls"] if c[0] == "custom_generate_reply"][0][1] == "PROMPT<[ci]hi [in]>"


def test_tgw_extension_processor_and_ui(recorder):
    from modules import ui

    app, params = recorder
    params["mark_token"] = 42
    assert final(app, prompt="x").raw_text == app.models.current().detokenize([42] * 6)
    blocks = ui.build(app)
    assert any(getattr(b, "elem_id", None) == "tgw-recorder-ui" for b in blocks.blocks.values())
    assert ("ui",) in params["calls"]


# ---- isolation ----------------------------------------------------------------------------------

def test_failing_hooks_are_skipped_and_the_next_extension_still_runs(ext_app):
    app = ext_app({
        "raises": "def input_modifier(string, state, is_chat=False):\n    raise KeyError('oops')\n",
        "wrong_type": "def input_modifier(string, state, is_chat=False):\n    return 42\n",
        "good": "def input_modifier(string, state, is_chat=False):\n    return string + '!'\n",
        "bad_processor": """
            class Broken:
                def __call__(self, input_ids, scores):
                    raise RuntimeError("processor broke")
            def logits_processor_modifier(processor_list, input_ids):
                processor_list.append(Broken())
            """,
    })
    backend = app.models.current()
    update = final(app, prompt="abc")
    assert update.prompt_tokens == len(backend.tokenize("abc!"))
    assert update.tokens == 10 and update.text == greedy_ids(backend, backend.tokenize("abc!"))
    failures = app.extensions.failures
    assert "input_modifier: KeyError" in failures["raises"][0]
    assert "returned int, expected str" in failures["wrong_type"][0]
    assert "processor broke" in failures["bad_processor"][0]
    status = app.extensions.status_markdown()
    assert "raises" in status and "KeyError" in status and "processor broke" in status


def test_a_hook_that_hangs_is_skipped_after_the_timeout_and_not_called_again(ext_app):
    app = ext_app({"hangs": """
        import threading
        release = threading.Event()
        calls = []
        def output_modifier(string, state, is_chat=False):
            calls.append(1)
            release.wait(30)
            return "too late"
        """}, extension_timeout=0.5)
    module = app.extensions.loaded["hangs"].module
    try:
        first = final(app, prompt="abc")
        assert first.text == first.raw_text and first.tokens == 10
        second = final(app, prompt="abc")
        assert second.text == second.raw_text
        assert module.calls == [1]                   # dead hooks are not called again
        assert "no answer within 0.5 s" in app.extensions.failures["hangs"][0]
    finally:
        module.release.set()


def test_a_custom_reply_that_fails_at_once_falls_back_to_the_model(ext_app):
    app = ext_app({"cr": "def custom_generate_reply(question, original_question, seed, state, stopping_strings, "
                         "is_chat=False):\n    raise ValueError('no server')\n    yield ''\n"})
    backend = app.models.current()
    update = final(app, prompt="abc")
    assert update.text == greedy_ids(backend, backend.tokenize("abc"))
    assert "no server" in app.extensions.failures["cr"][0]


def test_enable_and_disable_without_restart(ext_app):
    app = ext_app({"om": "def output_modifier(string, state, is_chat=False):\n    return 'replaced'\n"}, enabled=[])
    assert final(app, prompt="abc").text != "replaced"
    assert app.extensions.enable(["om"]) == {}
    assert final(app, prompt="abc").text == "replaced"
    app.extensions.enable([])
    assert final(app, prompt="abc").text != "replaced"


def test_a_request_in_flight_survives_extensions_being_switched(ext_app):
    app = ext_app({"om": "def output_modifier(string, state, is_chat=False):\n    return string + '!'\n"})
    stream = app.pipeline.stream(GenerationRequest(preset=GREEDY, prompt="abc"))
    first = next(u for u in stream if u.tokens)
    app.extensions.enable([])
    last = list(stream)[-1]
    assert first.tokens >= 1 and last.tokens == 10 and last.text == last.raw_text
    assert threading.active_count() < 50


def test_hook_history_modifier_keeps_tool_calls_and_their_results(ext_app):
    from modules.turns import ToolCallPart, ToolResultPart, Turn

    app = ext_app({"same": "def history_modifier(history):\n    return history\n"})
    call = ToolCallPart("call_1", "add", '{"a": 1, "b": 2}')
    history = [Turn.of("user", "1 + 2?"), Turn("assistant", (call,)),
               Turn("tool", (ToolResultPart("call_1", "add", "3"),)), Turn.of("user", "thanks")]
    prompt = app.pipeline.prepare(app.models.current(), GenerationRequest(preset=GREEDY, history=history)).prompt
    assert '"name": "add", "arguments": {"a": 1, "b": 2}' in prompt  # the micro model's template is not
    assert prompt.index("<tool_response>\n3\n</tool_response>") < prompt.index("thanks")  # tool-aware: text
