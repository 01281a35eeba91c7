"""Meta-tests, as datasette does: every hook is specified once, documented with its exact signature,
shown in the example extension, and has a test that calls it through the real pipeline."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pluggy

from modules import hookspecs
from modules.hookspecs import HOOKS

ROOT = Path(__file__).resolve().parents[2]
HOOK_TESTS = ROOT / "tests" / "integration" / "test_extension_hooks.py"


def signature(name: str) -> str:
    """`input_modifier(string, state, is_chat=False)`: the spec as an extension author writes it."""
    parts = []
    for param in inspect.signature(getattr(hookspecs, name)).parameters.values():
        if param.kind is param.VAR_KEYWORD:
            parts.append(f"**{param.name}")
        elif param.default is not param.empty:
            parts.append(f"{param.name}={param.default!r}")
        else:
            parts.append(param.name)
    return f"{name}({', '.join(parts)})"


def specified() -> set[str]:
    marker = "parlour_spec"
    return {name for name, obj in vars(hookspecs).items() if callable(obj) and hasattr(obj, marker)}


def test_hook_list_matches_the_specs():
    assert set(HOOKS) == specified() and len(HOOKS) == len(set(HOOKS))
    manager = pluggy.PluginManager("parlour")
    manager.add_hookspecs(hookspecs)
    assert {name for name in vars(manager.hook) if not name.startswith("_")} == set(HOOKS)


def test_every_hook_has_a_one_line_docstring():
    for name in HOOKS:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert doc and "\n" not in doc.strip(), f"{name} needs a one-line docstring"


def test_text_generation_webui_signatures_are_kept():
    expected = {
        "setup": "setup()", "ui": "ui()", "custom_css": "custom_css()", "custom_js": "custom_js()",
        "history_modifier": "history_modifier(history)", "state_modifier": "state_modifier(state)",
        "chat_input_modifier": "chat_input_modifier(text, visible_text, state)",
        "input_modifier": "input_modifier(string, state, is_chat=False)",
        "bot_prefix_modifier": "bot_prefix_modifier(string, state)",
        "custom_generate_chat_prompt": "custom_generate_chat_prompt(user_input, state, **kwargs)",
        "custom_tokenized_length": "custom_tokenized_length(prompt)",
        "custom_generate_reply": "custom_generate_reply(question, original_question, seed, state, "
                                 "stopping_strings, is_chat=False)",
        "tokenizer_modifier": "tokenizer_modifier(state, prompt, input_ids, input_embeds)",
        "logits_processor_modifier": "logits_processor_modifier(processor_list, input_ids)",
        "output_modifier": "output_modifier(string, state, is_chat=False)",
    }
    for name, text in expected.items():
        assert signature(name) == text


def test_every_hook_is_documented_with_its_exact_signature():
    docs = (ROOT / "docs" / "extensions.md").read_text(encoding="utf-8")
    missing = [signature(name) for name in HOOKS if f"`{signature(name)}`" not in docs]
    assert not missing, f"docs/extensions.md lacks: {missing}"


def test_every_hook_has_a_test_through_the_real_pipeline():
    tree = ast.parse(HOOK_TESTS.read_text(encoding="utf-8"))
    tests = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    missing = [name for name in HOOKS if f"test_hook_{name}" not in tests]
    assert not missing, f"{HOOK_TESTS.name} lacks tests for: {missing}"
    # and each of those tests builds a real App (ext_app: micro model + real extension folders)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_hook_"):
            assert "ext_app" in [a.arg for a in node.args.args], f"{node.name} must use the real pipeline"


def test_the_example_extension_implements_every_hook():
    tree = ast.parse((ROOT / "extensions" / "example" / "script.py").read_text(encoding="utf-8"))
    defined = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    for name in HOOKS:
        assert name in defined, f"extensions/example lacks {name}"
        assert ast.get_docstring(defined[name]), f"extensions/example: {name} needs a docstring"


def test_the_fixture_extension_defines_every_hook():
    tree = ast.parse((ROOT / "tests" / "fixtures" / "extensions" / "tgw_recorder" / "script.py").read_text())
    assert {n.name for n in tree.body if isinstance(n, ast.FunctionDef)} >= set(HOOKS)
