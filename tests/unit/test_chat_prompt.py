"""Chat prompts: shipped templates, modes, stop strings, truncation (reported), template files."""

from __future__ import annotations

from pathlib import Path

import pytest

from modules.chat import (ContextOverflow, PromptOptions, TemplateLibrary, build_chat_prompt, substitute,
                          template_stops)
from modules.templates import CHATML, ChatTemplate, TemplateError

ROOT = Path(__file__).resolve().parents[2]
LIB = TemplateLibrary(ROOT / "instruction-templates")
CONVO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Sum 2+2"}]

EXPECTED = {
    "ChatML": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
              "Hello!<|im_end|>\n<|im_start|>user\nSum 2+2<|im_end|>\n<|im_start|>assistant\n",
    "Llama-3": "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user"
               "<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nSum 2+2<|eot_id|><|start_header_id|>assistant"
               "<|end_header_id|>\n\n",
    "Mistral": "[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] Sum 2+2 [/INST]",
    "Alpaca": "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello!\n\n### Instruction:\nSum 2+2\n\n"
              "### Response:\n",
    "Vicuna": "Be brief.\n\nUSER: Hi\nASSISTANT: Hello!</s>\nUSER: Sum 2+2\nASSISTANT:",
    "Gemma": "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
             "<start_of_turn>user\nSum 2+2<end_of_turn>\n<start_of_turn>model\n",
}
STOPS = {"ChatML": "<|im_end|>", "Llama-3": "<|eot_id|>", "Mistral": "</s>", "Alpaca": "### Instruction:",
         "Vicuna": "</s>", "Gemma": "<end_of_turn>"}


class WordModel:
    """A stand-in model for fast tests: one token per whitespace-separated word."""

    loader = "transformers"  # what the registry says about it: Parlour renders its template

    def __init__(self, context: int = 4096, template: str | None = CHATML) -> None:
        self.context_length = context
        self.chat_template = ChatTemplate(template) if template else None

    def tokenize(self, text: str) -> list[int]:
        return list(range(len(text.split())))


def test_every_shipped_template_is_listed_and_renders_a_known_prompt():
    assert set(EXPECTED) <= set(LIB.names())
    for name, expected in EXPECTED.items():
        assert ChatTemplate(LIB.load(name)).render(CONVO) == expected, name


def test_stop_strings_are_derived_from_each_template():
    for name, stop in STOPS.items():
        assert stop in template_stops(ChatTemplate(LIB.load(name))), name
    assert "<|im_start|>" not in template_stops(ChatTemplate(LIB.load("ChatML")))[:1]


def test_text_generation_webui_style_file_loads_unchanged(tmp_path):
    (tmp_path / "Custom.yaml").write_text(
        'instruction_template: |-\n'
        '  {%- set ns = namespace(found=false) -%}\n'
        '  {%- for message in messages -%}\n'
        '      {%- if message[\'role\'] == \'system\' -%}\n'
        '          {%- set ns.found = true -%}\n'
        '      {%- endif -%}\n'
        '  {%- endfor -%}\n'
        '  {%- if not ns.found -%}\n'
        '      {{- \'SYSTEM: default\\n\' -}}\n'
        '  {%- endif %}\n'
        '  {%- for message in messages %}\n'
        '      {%- if message[\'role\'] == \'user\' -%}\n'
        '          {{-\'U: \' + message[\'content\'] + \'\\n\'-}}\n'
        '      {%- elif message[\'role\'] == \'assistant\' -%}\n'
        '          {{-\'A: \' + message[\'content\'] + \'\\n\'-}}\n'
        '      {%- endif -%}\n'
        '  {%- endfor -%}\n'
        '  {%- if add_generation_prompt -%}\n'
        '      {{-\'A:\'-}}\n'
        '  {%- endif -%}\n', encoding="utf-8")
    lib = TemplateLibrary(tmp_path)
    assert ChatTemplate(lib.load("Custom")).render([{"role": "user", "content": "x"}]) == "SYSTEM: default\nU: x\nA:"


def test_bad_template_files_give_clear_errors(tmp_path):
    (tmp_path / "NoKey.yaml").write_text("foo: bar\n")
    (tmp_path / "Broken.yaml").write_text("instruction_template: '{% for %}'\n")
    lib = TemplateLibrary(tmp_path)
    with pytest.raises(TemplateError, match="no 'instruction_template'"):
        lib.load("NoKey")
    with pytest.raises(TemplateError, match="does not compile"):
        lib.load("Broken")
    with pytest.raises(TemplateError, match="not found"):
        lib.load("Missing")
    with pytest.raises(TemplateError, match="separator"):
        lib.load("../etc/passwd")


def test_chat_mode_prompt_names_and_stops():
    opts = PromptOptions(mode="chat", name1="Ann", name2="Bot", context="{{char}} helps {{user}}.")
    prompt = build_chat_prompt(CONVO, opts, WordModel(), 100)
    assert prompt.text == "Be brief.\n\nBot helps Ann.\n\nAnn: Hi\nBot: Hello!\nAnn: Sum 2+2\nBot:"
    assert prompt.stops[:2] == ("\nAnn:", "\nBot:")
    imp = build_chat_prompt(CONVO, PromptOptions(mode="chat", name1="Ann", name2="Bot", impersonate=True),
                            WordModel(), 100)
    assert imp.text.endswith("Ann: Sum 2+2\nAnn:")


def test_instruct_mode_uses_the_chosen_template_or_the_models_own():
    alpaca = PromptOptions(mode="instruct", instruction_template=LIB.load("Alpaca"), context="Be kind.",
                           start_reply_with="Sure,")
    prompt = build_chat_prompt(CONVO, alpaca, WordModel(), 100)
    # the conversation's own system message beats the character context
    assert prompt.text.startswith("Be brief.\n\n### Instruction:\nHi") and prompt.text.endswith("### Response:\nSure,")
    no_system = build_chat_prompt(CONVO[1:], alpaca, WordModel(), 100)
    assert no_system.text.startswith("Be kind.\n\n### Instruction:\nHi")
    assert prompt.reply_prefix == "Sure," and "### Instruction:" in prompt.stops
    own = build_chat_prompt(CONVO, PromptOptions(mode="instruct"), WordModel(), 100)
    assert own.text.endswith("<|im_start|>user\nSum 2+2<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(TemplateError, match="no chat template"):
        build_chat_prompt(CONVO, PromptOptions(mode="instruct"), WordModel(template=None), 100)


def test_instruct_impersonate_and_continue():
    opts = PromptOptions(mode="instruct", instruction_template=LIB.load("ChatML"))
    imp = build_chat_prompt(CONVO, PromptOptions(**{**opts.__dict__, "impersonate": True}), WordModel(), 100)
    assert imp.text.endswith("Sum 2+2<|im_end|>\n<|im_start|>user\n")
    partial = CONVO + [{"role": "assistant", "content": "The answer"}]
    cont = build_chat_prompt(partial, PromptOptions(**{**opts.__dict__, "continue_last": True}), WordModel(), 100)
    assert cont.text.endswith("<|im_start|>assistant\nThe answer") and cont.reply_prefix == "The answer"


def test_chat_instruct_wraps_the_transcript_in_the_command():
    opts = PromptOptions(mode="chat-instruct", name1="Ann", name2="Bot", instruction_template=LIB.load("ChatML"),
                         chat_instruct_command="Reply as <|character|>.\n\n<|prompt|>")
    prompt = build_chat_prompt(CONVO, opts, WordModel(), 100)
    assert prompt.text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nReply as Bot.\n\nAnn: Hi\nBot: Hello!\nAnn: Sum 2+2\n<|im_end|>\n"
                           "<|im_start|>assistant\n")
    assert "\nAnn:" in prompt.stops and "<|im_end|>" in prompt.stops


def test_truncation_drops_oldest_pairs_keeps_context_and_reports():
    turns = []
    for i in range(20):
        turns += [{"role": "user", "content": f"question {i} " + "w " * 20},
                  {"role": "assistant", "content": f"answer {i} " + "w " * 20}]
    turns.append({"role": "user", "content": "last one"})
    opts = PromptOptions(mode="chat", context="CHARACTER CONTEXT here")
    full = build_chat_prompt(turns, opts, WordModel(context=10_000), 100)
    assert full.turns_dropped == 0
    cut = build_chat_prompt(turns, opts, WordModel(context=400), 100)
    assert cut.turns_dropped > 0 and cut.turns_dropped % 2 == 0  # whole pairs
    assert cut.prompt_tokens <= 400 - 100 and cut.context_length == 400
    assert cut.text.startswith("CHARACTER CONTEXT here") and cut.text.endswith("You: last one\nAssistant:")
    kept_first = turns[cut.turns_dropped]["content"].split()[1]
    assert f"question {kept_first}" in cut.text and f"question {int(kept_first) - 1} " not in cut.text
    # dropping one pair fewer would not have fit
    assert build_chat_prompt(turns[cut.turns_dropped - 2:], opts, WordModel(context=10_000), 100).prompt_tokens > 300
    with pytest.raises(ContextOverflow, match="context is 8"):
        build_chat_prompt([{"role": "user", "content": "w " * 50}], opts, WordModel(context=8), 4)


def test_substitute_placeholders():
    assert substitute("{{char}} and {{user}}, <BOT> and <USER>", "Ann", "Bot") == "Bot and Ann, Bot and Ann"


def test_sandbox_applies_to_instruction_templates():
    opts = PromptOptions(mode="instruct", instruction_template="{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(TemplateError, match="sandbox"):
        build_chat_prompt(CONVO, opts, WordModel(), 10)


def test_real_tokenizer_counts(micro_backend):
    prompt = build_chat_prompt(CONVO, PromptOptions(mode="instruct"), micro_backend, 16)
    assert prompt.prompt_tokens == len(micro_backend.tokenize(prompt.text))
    assert prompt.context_length == micro_backend.context_length
