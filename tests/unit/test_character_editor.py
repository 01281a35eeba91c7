"""The Character panel's logic (modules/character_editor.py) on a real characters folder and chat store."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from modules import character_editor as editor
from modules.character_editor import CharacterForm
from modules.characters import CharacterError, CharacterStore, card_v2
from modules.store import ChatStore


@pytest.fixture()
def store(tmp_path) -> CharacterStore:
    folder = tmp_path / "characters"
    folder.mkdir()
    (folder / "Plain.yaml").write_text("name: Plain\ngreeting: Hi {{user}}\ncontext: '{{char}} is plain.'\n")
    return CharacterStore(folder)


def png(width: int, height: int, colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    image = Image.new("RGB", (width, height), colour)
    image.paste((20, 20, 220), (0, 0, width // 2, height))  # left half blue: shows where the crop is
    image.save(out, format="PNG")
    return out.getvalue()


def test_a_new_character_is_saved_as_yaml_and_loads_back_with_its_greetings(store):
    form = CharacterForm(name="Mira", greeting="Ahoy!", alternate_greetings=("Avast!", "Yo ho!"),
                         context="{{char}} is a pirate.")
    saved = editor.save(store, form)
    assert saved.name == "Mira" and (store.root / "Mira.yaml").is_file()
    again = store.load("Mira")
    assert again.context == "{{char}} is a pirate." and again.greeting == "Ahoy!"
    assert again.alternate_greetings == ["Avast!", "Yo ho!"]
    assert editor.form_of(again) == form
    assert card_v2(again)["data"]["alternate_greetings"] == ["Avast!", "Yo ho!"]  # exported with the card


def test_scenario_and_examples_are_folded_into_the_context_the_prompt_reads(store):
    form = CharacterForm(name="Chiara", context="{{char}} keeps an observatory.", scenario="A clear night.",
                         example_dialogue="{{user}}: Hi\n{{char}}: Look up!")
    saved = editor.save(store, form)
    assert saved.context == ("{{char}} keeps an observatory.\n\nScenario: A clear night.\n\n"
                             "{{user}}: Hi\n{{char}}: Look up!")
    loaded = store.load("Chiara")
    assert (loaded.description, loaded.scenario, loaded.mes_example) == (form.context, form.scenario,
                                                                         form.example_dialogue)
    assert editor.form_of(loaded) == form  # the form shows the parts, not the folded text


def test_a_hand_written_character_keeps_its_one_context_and_unshown_fields_survive(store):
    form = editor.form_of(store.load("Plain"))
    assert form.context == "{{char}} is plain." and form.scenario == ""
    editor.save(store, CharacterForm(**{**form.__dict__, "context": "{{char}} is plainer."}), original="Plain")
    plain = store.load("Plain")
    assert plain.context == "{{char}} is plainer." and plain.description == ""
    # a card's personality (not in the form) is kept and still folded in
    (store.root / "Card.yaml").write_text("name: Card\ncontext: old\ndescription: Tall.\npersonality: kind\n")
    editor.save(store, CharacterForm(name="Card", context="Taller."), original="Card")
    card = store.load("Card")
    assert card.personality == "kind" and card.context == "Taller.\n\n{{char}}'s personality: kind"


def test_rename_moves_the_picture_and_every_users_chats(store, tmp_path):
    chats = ChatStore(tmp_path / "chats.sqlite")
    for user in ("ann", "bob"):
        chats.create_chat(user, character="Plain")
    store.save(store.load("Plain"), picture=png(40, 40))
    editor.save(store, CharacterForm(name="Simple", greeting="Hi"), original="Plain", chats=chats)
    assert store.names() == ["Simple"] and store.picture("Simple") is not None
    assert not (store.root / "Plain.png").exists()
    assert [c.character for c in chats.list_chats("ann")] == ["Simple"]
    assert [c.character for c in chats.list_chats("bob")] == ["Simple"]


def test_names_that_are_taken_or_unsafe_are_refused_and_nothing_changes(store):
    editor.save(store, CharacterForm(name="Other"))
    before = {p.name: p.read_bytes() for p in store.root.iterdir()}
    with pytest.raises(CharacterError, match="already exists"):
        editor.save(store, CharacterForm(name="other"))  # a new one with a taken name (any case)
    with pytest.raises(CharacterError, match="already exists"):
        editor.save(store, CharacterForm(name="Other"), original="Plain")  # renaming onto another
    for bad in ("", "  ", "../escape", "a/b", ".hidden"):
        with pytest.raises(CharacterError):
            editor.save(store, CharacterForm(name=bad))
    assert {p.name: p.read_bytes() for p in store.root.iterdir()} == before


def test_duplicate_and_delete(store):
    store.save(store.load("Plain"), picture=png(30, 30))
    copy = editor.duplicate(store, "Plain")
    assert copy == "Plain (2)" and editor.duplicate(store, "Plain") == "Plain (3)"
    assert store.load(copy).context == store.load("Plain").context and store.picture(copy) is not None
    editor.delete(store, copy)
    assert copy not in store.names() and store.picture(copy) is None
    with pytest.raises(CharacterError, match="not found"):
        editor.delete(store, copy)


def test_a_picture_is_cropped_to_its_centre_square_and_bounded():
    wide = Image.open(io.BytesIO(editor.square_picture(png(900, 300))))
    assert wide.size == (300, 300)
    # the crop is the centre: the left third (all blue in the source up to x=450) is gone on the right side
    assert wide.getpixel((299, 150))[:3] == (200, 30, 30) and wide.getpixel((0, 150))[:3] == (20, 20, 220)
    big = Image.open(io.BytesIO(editor.square_picture(png(1200, 1600))))
    assert big.size == (editor.PICTURE_PIXELS, editor.PICTURE_PIXELS)
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(jpeg, format="JPEG")
    assert Image.open(io.BytesIO(editor.square_picture(jpeg.getvalue()))).size == (48, 48)
    with pytest.raises(CharacterError, match="not an image"):
        editor.square_picture(b"<svg onload=alert(1)>")


def test_alternate_greetings_are_split_on_a_line_of_dashes():
    text = "First one\nstill first\n---\nSecond\n  ---  \n\n---\nThird"
    assert editor.split_greetings(text) == ("First one\nstill first", "Second", "Third")
    assert editor.split_greetings(editor.join_greetings(("a", "b\nc"))) == ("a", "b\nc")
    assert editor.split_greetings("") == ()


def test_creator_notes_tags_and_the_characters_note_are_edited_saved_and_exported(store):
    import base64
    import json
    from dataclasses import replace
    from pathlib import Path

    from modules.characters import png_text_chunks

    card = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "cards" / "captain-v2.json").read_text())
    card["data"]["extensions"]["depth_prompt"] = {"prompt": "[Reyes hides the map.]", "depth": 2, "role": "user"}
    store.import_card(json.dumps(card).encode())
    form = editor.form_of(store.load("Captain Reyes"))
    # what a card brings is in the form
    assert form.creator_notes == "Lore for the Gull's route is in the book." and form.tags == ("sea", "adventure")
    assert (form.note, form.note_depth, form.note_role) == ("[Reyes hides the map.]", 2, "user")
    changed = replace(form, creator_notes="Try <b>storms</b> <script>x()</script>.", tags=editor.split_tags(
        " sea, pirates,, sea ,Gull "), note="[{{char}} trusts {{user}}.]", note_depth=0, note_role="assistant")
    assert changed.tags == ("sea", "pirates", "Gull")
    editor.save(store, changed, original="Captain Reyes")
    again = store.load("Captain Reyes")  # from the YAML file
    assert again.creator_notes == "Try <b>storms</b> <script>x()</script>." and again.tags == ["sea", "pirates", "Gull"]
    assert again.extensions["depth_prompt"] == {"prompt": "[{{char}} trusts {{user}}.]", "depth": 0,
                                                "role": "assistant"}
    assert again.extensions["world"] == "Gull route"  # the card's other extensions are kept
    assert editor.form_of(again) == changed
    # exported as SillyTavern reads a card (V2 `chara` and V3 `ccv3`), and back
    chunks = png_text_chunks(store.export_card("Captain Reyes"))
    for key in ("chara", "ccv3"):
        data = json.loads(base64.b64decode(chunks[key]))["data"]
        assert data["creator_notes"] == again.creator_notes and data["tags"] == ["sea", "pirates", "Gull"]
        assert data["extensions"]["depth_prompt"] == again.extensions["depth_prompt"]
    back = store.import_card(store.export_card("Captain Reyes"), name="Round trip")
    assert (back.creator_notes, back.tags, back.character_note()) == (
        again.creator_notes, again.tags, again.character_note())
    assert editor.join_tags(back.tags) == "sea, pirates, Gull"


def test_a_hand_written_character_gets_no_depth_prompt_until_it_has_a_note(store):
    from dataclasses import replace

    editor.save(store, editor.form_of(store.load("Plain")), original="Plain")
    assert "depth_prompt" not in store.load("Plain").extensions
    assert "extensions" not in (store.root / "Plain.yaml").read_text()
    editor.save(store, replace(editor.form_of(store.load("Plain")), note="Stay plain."), original="Plain")
    assert store.load("Plain").extensions["depth_prompt"] == {"prompt": "Stay plain.", "depth": 4, "role": "system"}


@pytest.mark.parametrize("depth, role, message", [(-1, "system", "depth must be a whole number from 0 to 1000"),
                                                  (1001, "system", "from 0 to 1000"), (2.5, "system", "whole number"),
                                                  (2, "narrator", "role must be one of system, user, assistant")])
def test_a_characters_note_depth_or_role_that_cannot_work_is_refused_and_nothing_changes(store, depth, role, message):
    from dataclasses import replace

    before = (store.root / "Plain.yaml").read_bytes()
    form = replace(editor.form_of(store.load("Plain")), note="x", note_depth=depth, note_role=role)
    with pytest.raises(CharacterError, match=message):
        editor.save(store, form, original="Plain")
    assert (store.root / "Plain.yaml").read_bytes() == before
