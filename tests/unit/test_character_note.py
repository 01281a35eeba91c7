"""A card's Character's Note (SillyTavern's `extensions.depth_prompt`) in the prompt Parlour builds: a
message of its role, `depth` messages from the end, on every reply; names substituted; kept through
truncation; never inside a reply being continued; merged where a template cannot show it apart."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from modules import character_note
from modules.character_note import CharacterNote
from modules.characters import CharacterStore
from modules.chat import PromptOptions, build_chat_prompt, engine_messages, resolve_options
from tests.unit.test_chat_prompt import LIB, WordModel

CARD = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "cards" / "captain-v2.json").read_text())
HISTORY = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
           {"role": "user", "content": "Where to?"}]


def prompt(mode: str = "chat", history=HISTORY, **options) -> str:
    opts = PromptOptions(mode=mode, name1="Ann", name2="Reyes", context="CTX", **options)
    return build_chat_prompt(history, opts, WordModel(), 50).text


@pytest.mark.parametrize("role, line", [("system", "[{{char}} hides a map from {{user}}.]"),
                                        ("user", "Ann: [{{char}} hides a map from {{user}}.]"),
                                        ("assistant", "Reyes: [{{char}} hides a map from {{user}}.]")])
@pytest.mark.parametrize("depth, before", [(0, 3), (2, 1), (9, 0)])
def test_chat_mode_puts_the_note_depth_messages_from_the_end_as_a_line_of_its_role(role, line, depth, before):
    note = CharacterNote("  [{{char}} hides a map from {{user}}.]  ", depth, role)
    lines = ["Ann: Hi", "Reyes: Hello!", "Ann: Where to?"]
    expected = line.replace("{{char}}", "Reyes").replace("{{user}}", "Ann")
    lines.insert(before, expected)  # depth 9 > 3 messages: in front of the oldest, after the context
    assert prompt(character_note=note) == "CTX\n\n" + "\n".join(lines) + "\nReyes:"


@pytest.mark.parametrize("role", ["system", "user", "assistant"])
@pytest.mark.parametrize("depth, before", [(0, 3), (2, 1), (9, 0)])
def test_instruct_mode_gives_the_template_a_message_of_the_notes_role(role, depth, before):
    turns = [f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in HISTORY]
    turns.insert(before, f"<|im_start|>{role}\nNote for Reyes<|im_end|>\n")
    expected = "<|im_start|>system\nCTX<|im_end|>\n" + "".join(turns) + "<|im_start|>assistant\n"
    assert prompt("instruct", character_note=CharacterNote("Note for {{char}}", depth, role)) == expected
    # chat-instruct: the note is a line of the transcript inside the one instruction
    text = prompt("chat-instruct", character_note=CharacterNote("Note", depth, role))
    line = {"system": "Note", "user": "Ann: Note", "assistant": "Reyes: Note"}[role]
    transcript = ["Ann: Hi", "Reyes: Hello!", "Ann: Where to?"]
    transcript.insert(before, line)
    assert "CTX\n\n" + "\n".join(transcript) + "\n" in text


def test_the_note_is_there_on_every_reply_and_an_empty_one_adds_nothing():
    note = CharacterNote("[Secret map]", 1, "system")
    history = list(HISTORY)
    for reply in ("Aye.", "Nay."):
        text = prompt(history=history, character_note=note)
        assert text.count("[Secret map]") == 1
        assert text.index("[Secret map]") < text.rindex(history[-1]["content"])
        history += [{"role": "assistant", "content": reply}, {"role": "user", "content": f"after {reply}"}]
    assert prompt(character_note=CharacterNote("   ", 0, "user")) == prompt()


def test_the_note_survives_truncation_and_counts_its_depth_in_the_kept_turns():
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"word{i} " * 10} for i in range(20)]
    opts = PromptOptions(mode="chat", context="CTX", character_note=CharacterNote("[NOTE]", 2, "system"))
    built = build_chat_prompt(history, opts, WordModel(context=120), 40)
    assert built.turns_dropped > 0
    lines = built.text.splitlines()
    assert "[NOTE]" in lines and lines[lines.index("[NOTE]") + 1].startswith("You: word18")
    far = build_chat_prompt(history, PromptOptions(mode="chat", context="CTX",
                                                   character_note=CharacterNote("[FAR]", 500, "system")),
                            WordModel(context=120), 40)
    assert far.turns_dropped > 0 and far.text.startswith("CTX\n\n[FAR]\nYou: word")


def test_post_history_comes_after_a_depth_0_note_and_continue_keeps_both_out_of_the_reply():
    note = CharacterNote("[NOTE]", 0, "system")
    text = prompt("instruct", character_note=note, post_history="[PHI]")
    assert text.endswith("<|im_start|>user\nWhere to?<|im_end|>\n<|im_start|>system\n[NOTE]\n\n[PHI]<|im_end|>\n"
                         "<|im_start|>assistant\n")
    partial = HISTORY + [{"role": "assistant", "content": "We sail"}]
    for mode in ("chat", "instruct"):
        opts = PromptOptions(mode=mode, character_note=note, post_history="[PHI]", continue_last=True)
        built = build_chat_prompt(partial, opts, WordModel(), 50)
        assert built.reply_prefix == "We sail" and built.text.endswith("We sail")
        assert built.text.index("Where to?") < built.text.index("[NOTE]") < built.text.index("[PHI]") \
            < built.text.index("We sail")


STRICT = ("{% for m in messages %}{% if m.role == 'system' and not loop.first %}"
          "{{ raise_exception('System role only at the start') }}{% endif %}"
          "[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
#: renders a system message only when it comes first; one inside the chat would silently vanish
FIRST_SYSTEM_ONLY = ("{% for m in messages %}{% if m.role != 'system' or loop.first %}[{{ m.role }}] {{ m.content }}\n"
                     "{% endif %}{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")


@pytest.mark.parametrize("template", [STRICT, FIRST_SYSTEM_ONLY])
def test_a_template_that_cannot_show_the_note_apart_gets_it_merged_at_its_depth(template):
    for depth, expected in ((0, "[user] Where to?\n\n[NOTE]\n"), (2, "[assistant] [NOTE]\n\nHello!\n")):
        text = prompt("instruct", instruction_template=template,
                      character_note=CharacterNote("[NOTE]", depth, "system"))
        assert text.count("[NOTE]") == 1 and expected in text


def test_shipped_templates_all_show_the_note():
    for name in LIB.names():
        for role in character_note.ROLES:
            for depth in (0, 2):
                text = prompt("instruct", instruction_template=LIB.load(name), template_name=name,
                              character_note=CharacterNote("[NOTE]", depth, role))
                assert text.count("[NOTE]") == 1, (name, role, depth)


def test_remote_engines_get_the_note_as_a_message_of_its_role():
    note = CharacterNote("Watch {{user}}.", 1, "assistant")
    opts = PromptOptions(mode="instruct", name1="Ann", name2="Reyes", context="CTX", character_note=note)
    messages = engine_messages(HISTORY, opts)
    assert messages == [{"role": "system", "content": "CTX"}, HISTORY[0], HISTORY[1],
                        {"role": "assistant", "content": "Watch Ann."}, HISTORY[2]]
    chat = engine_messages(HISTORY, PromptOptions(mode="chat", name1="Ann", name2="Reyes",
                                                  character_note=CharacterNote("N", 0, "system")))
    assert chat[-1] == {"role": "system", "content": "N"}


@pytest.mark.parametrize("raw, expected", [
    ({"prompt": "x", "depth": 2, "role": "user"}, CharacterNote("x", 2, "user")),
    ({"prompt": "x"}, CharacterNote("x", 4, "system")),  # SillyTavern's defaults
    ({"prompt": "x", "depth": 1.0, "role": 2}, CharacterNote("x", 1, "assistant")),  # its role numbers
    ({"prompt": "x", "depth": "3", "role": "narrator"}, CharacterNote("x", 3, "system")),  # unknown role: system
    ({"prompt": "x", "depth": 5000}, CharacterNote("x", 1000, "system")),
    ({"prompt": "x", "depth": -2}, CharacterNote("x", 0, "system")),
    ({"prompt": "x", "depth": "deep"}, CharacterNote("x", 4, "system")),
    ({"prompt": 5}, CharacterNote("", 4, "system")),
    ("not a mapping", CharacterNote()),
    (None, CharacterNote()),
])
def test_a_cards_depth_prompt_is_read_leniently(raw, expected):
    assert character_note.parse(raw) == expected


def test_an_imported_cards_note_reaches_the_prompt_through_resolve_options(tmp_path):
    store = CharacterStore(tmp_path / "characters")
    card = json.loads(json.dumps(CARD))
    card["data"]["extensions"]["depth_prompt"] = {"prompt": "[{{char}} distrusts {{user}}.]", "depth": 1,
                                                  "role": "system"}
    store.import_card(json.dumps(card).encode())
    app = SimpleNamespace(characters=store, store=SimpleNamespace(profile=lambda user: {"name": "Ann",
                                                                                       "description": ""}))
    opts = resolve_options(app, "ann", mode="chat", character="Captain Reyes")
    assert opts.character_note == CharacterNote("[{{char}} distrusts {{user}}.]", 1, "system")
    text = build_chat_prompt(HISTORY, opts, WordModel(), 50).text
    assert "Reyes: Hello!\n[Captain Reyes distrusts Ann.]\nAnn: Where to?\n\n[Keep replies under three sentences.]" \
        in text
