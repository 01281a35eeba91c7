"""Character cards as SillyTavern writes them (V1, V2, V3 `ccv3`, JSON and PNG): every field kept, used
(alternate greetings as the first reply's versions, the lorebook, post-history instructions) and written
back the way SillyTavern reads it; same-name imports; malformed cards refused with one line."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import pytest

from modules.characters import (CharacterError, CharacterExists, CharacterStore, add_greetings, blank_png,
                                card_from_bytes, png_text_chunks, png_with_text)
from modules.store import ChatStore

CARD = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "cards" / "captain-v2.json").read_text())
V3_ONLY = {"nickname": "Cap", "group_only_greetings": ["Crew, listen up."], "source": ["https://example.org/cap"],
           "creation_date": 1767621780, "modification_date": 1767621790,
           "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
           "creator_notes_multilingual": {"de": "Notizen"}}


def png_card(card: dict, key: str = "chara") -> bytes:
    return png_with_text(blank_png(), key, base64.b64encode(json.dumps(card).encode()))


@pytest.fixture()
def store(tmp_path) -> CharacterStore:
    return CharacterStore(tmp_path / "characters")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


def test_v2_card_keeps_every_field(store):
    character = store.import_card(json.dumps(CARD).encode())
    data = CARD["data"]
    assert character.name == "Captain Reyes"
    assert character.alternate_greetings == data["alternate_greetings"]
    assert character.character_book == data["character_book"]
    assert character.post_history_instructions == data["post_history_instructions"]
    assert character.creator_notes == data["creator_notes"] and character.tags == ["sea", "adventure"]
    assert (character.creator, character.character_version) == ("parlour-tests", "1.2")
    assert character.extensions["world"] == "Gull route" and character.extensions["depth_prompt"]["depth"] == 4
    assert character.card_extra == {"group_only_greetings": []}
    assert store.load("Captain Reyes") == character       # everything survives the YAML file
    assert character.lorebook().entries[0].keys == ("Port Vell",)


def test_original_macro_in_the_system_prompt_is_not_sent_but_kept_for_export(store):
    # SillyTavern replaces {{original}} with the system prompt the card's overrides; Parlour has none
    # beside the context, so it must not reach the model as the literal text (as it did), nor be lost
    from dataclasses import replace

    from modules import character_editor as editor

    card = copy.deepcopy(CARD)
    card["data"]["system_prompt"] = "{{original}} Write {{char}}'s next reply tersely."
    character = store.import_card(json.dumps(card).encode())
    assert "{{original}}" not in character.context
    assert character.context.startswith("Write {{char}}'s next reply tersely.")
    assert character.system_prompt == card["data"]["system_prompt"]
    exported = sillytavern_reads(store.export_card(character.name))["data"]
    assert exported["system_prompt"] == card["data"]["system_prompt"]
    # an edit in the Character tab folds the context again, the same way
    edited = editor.save(store, replace(editor.form_of(character), scenario="On deck."), original=character.name)
    assert "{{original}}" not in edited.context and edited.system_prompt == card["data"]["system_prompt"]


def sillytavern_reads(png: bytes) -> dict:
    """What SillyTavern's card parser takes from a PNG: the `ccv3` chunk if there is one, else `chara`."""
    chunks = {k.lower(): v for k, v in png_text_chunks(png).items()}
    return json.loads(base64.b64decode(chunks.get("ccv3") or chunks["chara"]))


def test_export_writes_v2_and_v3_chunks_with_every_field(store):
    store.import_card(json.dumps(CARD).encode())
    png = store.export_card("Captain Reyes")
    chunks = png_text_chunks(png)
    v2 = json.loads(base64.b64decode(chunks["chara"]))
    v3 = sillytavern_reads(png)
    assert (v2["spec"], v2["spec_version"], v3["spec"], v3["spec_version"]) == (
        "chara_card_v2", "2.0", "chara_card_v3", "3.0")
    for card in (v2, v3):
        for key, value in CARD["data"].items():
            if key == "extensions":
                assert {k: v for k, v in card["data"]["extensions"].items() if k != "parlour"} == value
            else:
                assert card["data"][key] == value, key
    again = store.import_card(store.export_card("Captain Reyes"), name="Round trip")
    original = store.load("Captain Reyes")
    assert again.alternate_greetings == original.alternate_greetings and again.character_book == original.character_book
    assert again.context == original.context
    json_card = json.loads(store.export_card("Captain Reyes", png=False))
    assert json_card["spec"] == "chara_card_v2"
    assert json_card["data"]["character_book"] == CARD["data"]["character_book"]


def test_v3_ccv3_card_keeps_its_own_fields(store):
    v3 = {"spec": "chara_card_v3", "spec_version": "3.0", "data": {**copy.deepcopy(CARD["data"]), **V3_ONLY}}
    character = store.import_card(png_card(v3, key="ccv3"))
    assert {k: character.card_extra[k] for k in V3_ONLY} == V3_ONLY
    exported = sillytavern_reads(store.export_card(character.name))["data"]
    assert {k: exported[k] for k in V3_ONLY} == V3_ONLY


def test_v1_and_pygmalion_cards(store):
    v1 = {"name": "Old", "description": "d", "first_mes": "hi", "creatorcomment": "notes", "tags": "a, b",
          "talkativeness": "0.5"}
    character = store.import_card(json.dumps(v1).encode())
    assert character.creator_notes == "notes" and character.tags == ["a", "b"]
    assert character.card_extra == {"talkativeness": "0.5"}
    pyg = {"char_name": "Pyg", "char_persona": "a persona", "char_greeting": "hello", "world_scenario": "a world",
           "example_dialogue": "You: hi"}
    character = store.import_card(json.dumps(pyg).encode())
    assert (character.description, character.greeting, character.scenario, character.mes_example) == (
        "a persona", "hello", "a world", "You: hi")


def test_same_name_import_offers_overwrite_or_a_new_name(store):
    store.import_card(json.dumps(CARD).encode())
    before = snapshot(store.root)
    changed = copy.deepcopy(CARD)
    changed["data"]["first_mes"] = "Changed."
    with pytest.raises(CharacterExists) as caught:
        store.import_card(json.dumps(changed).encode())
    assert caught.value.suggestion == "Captain Reyes (2)" and snapshot(store.root) == before
    renamed = store.import_card(json.dumps(changed).encode(), name=caught.value.suggestion)
    assert renamed.name == "Captain Reyes (2)" and store.load("Captain Reyes").greeting != "Changed."
    assert store.free_name("Captain Reyes") == "Captain Reyes (3)"
    assert store.import_card(json.dumps(changed).encode(), overwrite=True).greeting == "Changed."
    assert store.load("Captain Reyes").greeting == "Changed."


def test_characters_added_on_disk_are_listed(store):
    store.import_card(json.dumps(CARD).encode())
    (store.root / "Hand made.yaml").write_text("name: Hand made\ngreeting: hi\ncontext: ctx\n")
    assert store.names() == ["Captain Reyes", "Hand made"]


def test_greetings_open_a_chat_as_versions_of_the_first_reply(store, tmp_path):
    character = store.import_card(json.dumps(CARD).encode())
    chats = ChatStore(tmp_path / "chats.sqlite")
    chat = chats.create_chat("ann", character=character.name)
    add_greetings(chats, "ann", chat, character, "Ann")
    first = chats.path("ann", chat)
    assert len(first) == 1 and first[0].content == "*Reyes looks up from the charts.* You're late, Ann."
    assert (first[0].version, first[0].versions) == (1, 3)
    chats.select_version("ann", chat, first[0].id, +1)
    assert chats.path("ann", chat)[0].content == "*The deck creaks.* Welcome aboard the Gull, Ann."
    chats.add_message("ann", chat, "user", "Thanks.")  # the conversation goes on from the greeting shown
    assert [m.content for m in chats.path("ann", chat)][0].startswith("*The deck creaks.*")


DEEP = b'{"name": "x", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["data"].update(alternate_greetings=[1, 2]), "'alternate_greetings' must be a list of texts"),
    (lambda c: c["data"].update(alternate_greetings={"a": 1}), "'alternate_greetings' must be a list of texts"),
    (lambda c: c["data"].update(tags=[["x"]]), "'tags' must be a list of texts"),
    (lambda c: c["data"].update(post_history_instructions=["x"]), "'post_history_instructions' must be text"),
    (lambda c: c["data"].update(extensions=[1]), "'extensions' must be an object"),
    (lambda c: c["data"].update(character_book={"entries": [{"keys": {"a": 1}, "content": "x"}]}),
     "character_book entry 0: 'keys' must be a list of texts"),
    (lambda c: c["data"].update(character_book=[1]), "character_book must be an object"),
    (lambda c: c["data"].update(name={"a": 1}), "no name"),
])
def test_malformed_cards_get_one_line_and_change_nothing(store, mutate, message):
    store.import_card(json.dumps({"name": "Kept", "first_mes": "hi"}).encode())
    before = snapshot(store.root)
    card = copy.deepcopy(CARD)
    mutate(card)
    for data in (json.dumps(card).encode(), png_card(card)):
        with pytest.raises(CharacterError) as caught:
            store.import_card(data)
        assert message in str(caught.value) and "\n" not in str(caught.value)
        assert snapshot(store.root) == before


def test_deeply_nested_card_is_refused_without_recursion_error(store):
    for data in (DEEP, png_with_text(blank_png(), "chara", base64.b64encode(DEEP))):
        with pytest.raises(CharacterError, match="nested deeper than 64 levels"):
            card_from_bytes(data)
    nested = {"spec": "chara_card_v2", "data": {"name": "N", "extensions": {}}}
    inner = nested["data"]["extensions"]
    for _ in range(80):
        inner["x"] = {}
        inner = inner["x"]
    with pytest.raises(CharacterError, match="nested deeper"):
        store.import_card(png_card(nested))
    assert snapshot(store.root) == {}
