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
