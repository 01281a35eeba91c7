"""Every extension hook, in one place: names, argument order and meaning follow text-generation-webui.

An extension is either a text-generation-webui style `script.py` (plain functions named like these
hooks, no decorators) or a module/package marked with `@hookimpl` and registered under the `parlour`
entry point group. Chained modifiers run in load order, each getting the previous one's result; for
the `custom_*` hooks the first extension that defines one wins. Hooks after `output_modifier` are
Parlour additions. docs/extensions.md documents each hook; tests/unit/test_extension_meta.py keeps
the docs and the tests in step with this file.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("parlour")
hookimpl = pluggy.HookimplMarker("parlour")


@hookspec
def setup() -> None:
    """Run once when the extension is loaded (before any other hook)."""


@hookspec
def ui() -> None:
    """Create the extension's Gradio components (in its own tab if params['is_tab'], else in the shared block)."""


@hookspec
def custom_css() -> str:
    """Return CSS added to the page."""


@hookspec
def custom_js() -> str:
    """Return JavaScript run when the page loads."""


@hookspec
def history_modifier(history: dict[str, Any]) -> dict[str, Any]:
    """Return the chat history ({'internal': [[user, bot], ...], 'visible': [...]}) the prompt is built from."""


@hookspec
def state_modifier(state: dict[str, Any]) -> dict[str, Any]:
    """Return the generation state (sampling parameters and chat settings) for this request."""


@hookspec
def chat_input_modifier(text: str, visible_text: str, state: dict[str, Any]) -> tuple[str, str]:
    """Return (text for the model, text shown in the chat) for the user's new message."""


@hookspec
def input_modifier(string: str, state: dict[str, Any], is_chat: bool = False) -> str:
    """Return the user's input (chat message or notebook prompt) as the model should see it."""


@hookspec
def bot_prefix_modifier(string: str, state: dict[str, Any]) -> str:
    """Return the text that starts the bot's turn in the prompt (hidden from the reply)."""


@hookspec
def custom_generate_chat_prompt(user_input: str, state: dict[str, Any], **kwargs: Any) -> str:
    """Return the whole chat prompt instead of Parlour's template (or None to use the template)."""


@hookspec
def custom_tokenized_length(prompt: str) -> int:
    """Return the prompt's length in tokens instead of the model tokenizer's count (or None)."""


@hookspec
def custom_generate_reply(question: str, original_question: str, seed: int, state: dict[str, Any],
                          stopping_strings: list[str], is_chat: bool = False) -> Any:
    """Return an iterator of the growing reply text that replaces the model (or None to use the model)."""


@hookspec
def tokenizer_modifier(state: dict[str, Any], prompt: str, input_ids: Any, input_embeds: Any) -> tuple[str, Any, Any]:
    """Return (prompt, input_ids, input_embeds) after tokenization, before generation."""


@hookspec
def logits_processor_modifier(processor_list: list[Any], input_ids: Any) -> Any:
    """Add logits processors to processor_list (in place, or return a new list)."""


@hookspec
def output_modifier(string: str, state: dict[str, Any], is_chat: bool = False) -> str:
    """Return the finished reply as it should be shown (the model's own text stays in the history)."""


@hookspec
def reply_footer(stats: dict[str, Any], state: dict[str, Any]) -> str:
    """Return a line shown under the finished reply (stats: tokens, seconds, first_token_seconds, prompt_tokens)."""


#: The hooks in the order the pipeline reaches them; the docs and meta-tests walk this list.
HOOKS: tuple[str, ...] = (
    "setup", "ui", "custom_css", "custom_js", "state_modifier", "chat_input_modifier", "input_modifier",
    "history_modifier", "custom_generate_chat_prompt", "bot_prefix_modifier", "custom_tokenized_length",
    "tokenizer_modifier", "logits_processor_modifier", "custom_generate_reply", "output_modifier",
    "reply_footer",
)
