"""Characters and cards: V1/V2 JSON and PNG import, V2 export, and bad cards that change nothing."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path

import pytest

from modules.characters import (MAX_TEXT_CHUNK, CharacterError, CharacterStore, blank_png, card_from_bytes,
                                character_from_card, png_text_chunks, png_with_text)
from modules.chat import substitute

ROOT = Path(__file__).resolve().parents[2]
V1 = {"name": "Mira", "description": "{{char}} is a pirate.", "personality": "bold", "scenario": "At sea.",
      "first_mes": "Ahoy, {{user}}!", "mes_example": "<START>\n{{user}}: hi\n{{char}}: arr"}
V2 = {"spec": "chara_card_v2", "spec_version": "2.0",
      "data": {**V1, "name": "Mira2", "system_prompt": "Stay in character.", "tags": ["x"], "extensions": {}}}


def png_card(card: dict, key: str = "chara") -> bytes:
    return png_with_text(blank_png(), key, base64.b64encode(json.dumps(card).encode()))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


@pytest.fixture()
def store(tmp_path) -> CharacterStore:
    return CharacterStore(tmp_path / "characters")


def test_shipped_characters_load():
    shipped = CharacterStore(ROOT / "characters")
    assert {"Assistant", "Example"} <= set(shipped.names())
    assistant = shipped.load("Assistant")
    assert "{{char}}" in assistant.context
    assert shipped.load("Example").greeting


def test_v1_json_card(store):
    character = store.import_card(json.dumps(V1).encode())
    assert character.name == "Mira" and character.greeting == "Ahoy, {{user}}!"
    assert "pirate" in character.context and "Scenario: At sea." in character.context
    assert store.load("Mira") == character
    assert substitute(character.greeting, "Ann", character.name) == "Ahoy, Ann!"
    assert store.picture("Mira") is None


def test_v2_png_card_roundtrip(store):
    data = png_card(V2)
    character = store.import_card(data)
    assert character.system_prompt == "Stay in character." and character.context.startswith("Stay in character.")
    assert store.picture("Mira2").read_bytes() == data
    exported = store.export_card("Mira2")
    card = card_from_bytes(exported)  # the ccv3 chunk, which readers prefer
    chunks = png_text_chunks(exported)  # as SillyTavern writes: V2 in `chara`, the same card as V3 in `ccv3`
    assert json.loads(base64.b64decode(chunks["chara"]))["spec"] == "chara_card_v2"
    assert card["spec"] == "chara_card_v3" and card["spec_version"] == "3.0"
    for key in ("description", "personality", "scenario", "mes_example", "system_prompt"):
        assert card["data"][key] == V2["data"][key]
    assert card["data"]["first_mes"] == V1["first_mes"]
    again = character_from_card(json.loads(store.export_card("Mira2", png=False)))
    assert again == character


def test_ccv3_chunk_is_preferred(store):
    v3 = {"spec": "chara_card_v3", "data": {**V1, "name": "Three"}}
    v1_png = png_card(V1)
    body = b"ccv3\x00" + base64.b64encode(json.dumps(v3).encode())
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    data = v1_png[:-12] + chunk + v1_png[-12:]  # both chunks, ccv3 after chara
    assert set(png_text_chunks(data)) == {"chara", "ccv3"}
    assert store.import_card(data).name == "Three"


@pytest.mark.parametrize("data, message", [
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 10, "truncated"),
    (b"not json at all", "not valid JSON"),
    (json.dumps([1, 2]).encode(), "JSON object"),
    (json.dumps({"description": "no name"}).encode(), "no name"),
    (json.dumps({"name": "../../evil"}).encode(), "file name"),
    (json.dumps({"name": "..", "first_mes": "x"}).encode(), "file name"),
    (json.dumps({"spec": "chara_card_v2", "data": "nope"}).encode(), "under 'data'"),
    (json.dumps({"name": "X", "first_mes": {"a": 1}}).encode(), "must be text"),
    (json.dumps({"spec": "weird", "name": "X"}).encode(), "unknown card spec"),
    (blank_png(), "no character card"),
])
def test_bad_cards_are_refused_and_change_nothing(store, data, message):
    store.import_card(json.dumps(V1).encode())
    before = snapshot(store.root)
    with pytest.raises(CharacterError, match=message):
        store.import_card(data)
    assert snapshot(store.root) == before
    assert not (store.root.parent / "evil.yaml").exists()


def test_corrupt_png_checksum_and_huge_chunk(store):
    good = png_card(V1)
    corrupt = bytearray(good)
    corrupt[40] ^= 0xFF  # inside a chunk body
    with pytest.raises(CharacterError, match="corrupt|truncated"):
        store.import_card(bytes(corrupt))
    huge_len = MAX_TEXT_CHUNK + 1
    # a chunk header that claims a huge text chunk is refused before reading it
    bomb = blank_png()[:-12] + struct.pack(">I4s", huge_len, b"tEXt") + b"chara\x00" + b"A" * 16
    with pytest.raises(CharacterError, match="limit"):
        png_text_chunks(bomb)
    assert snapshot(store.root) == {}


def test_existing_character_is_not_overwritten_by_import(store):
    store.import_card(json.dumps(V1).encode())
    before = snapshot(store.root)
    with pytest.raises(CharacterError, match="already exists"):
        store.import_card(json.dumps({**V1, "first_mes": "changed"}).encode())
    assert snapshot(store.root) == before


def test_bad_yaml_character_and_unsafe_names(store):
    store.root.mkdir()
    (store.root / "Bad.yaml").write_text("- a list\n")
    with pytest.raises(CharacterError, match="mapping"):
        store.load("Bad")
    with pytest.raises(CharacterError, match="character name"):
        store.load("../secrets")
    with pytest.raises(CharacterError, match="not found"):
        store.load("Nobody")


def test_exported_cards_are_real_pngs(store):
    import io

    from PIL import Image

    assert png_text_chunks(blank_png()) == {}
    store.import_card(json.dumps(V1).encode())
    image = Image.open(io.BytesIO(store.export_card("Mira")))
    image.load()
    assert image.size == (1, 1) and "chara" in image.text


def picture_png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(out, format="PNG")
    return out.getvalue()


def test_avatar_is_a_small_reencoded_png_without_the_card_text(tmp_path):
    import io

    from PIL import Image

    store = CharacterStore(tmp_path)
    big_card = png_with_text(picture_png(600, 900), "chara",
                             base64.b64encode(json.dumps({"name": "Mira", "description": "x" * 200_000}).encode()))
    store.import_card(big_card)
    url = store.avatar("Mira")
    assert url.startswith("data:image/png;base64,")
    data = base64.b64decode(url.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as image:
        assert max(image.size) == 128 and image.size == (85, 128)  # aspect ratio kept
    assert b"chara" not in data and len(data) < 10_000  # the card's JSON is not sent to browsers
    assert store.avatar("Mira") is url  # cached while the file is unchanged


def test_avatar_missing_broken_or_unsafe(tmp_path):
    store = CharacterStore(tmp_path)
    (tmp_path / "Plain.yaml").write_text("name: Plain\n")
    assert store.avatar("Plain") is None
    (tmp_path / "Broken.yaml").write_text("name: Broken\n")
    (tmp_path / "Broken.png").write_bytes(blank_png()[:30])
    with pytest.raises(CharacterError, match="not a readable PNG"):
        store.avatar("Broken")
    (tmp_path / "Fake.png").write_bytes(b"<svg onload=alert(1)>")
    with pytest.raises(CharacterError, match="not a PNG"):
        store.avatar("Fake")
    (tmp_path.parent / "outside.png").write_bytes(picture_png(4, 4))
    for name in ("../outside", "..", "/etc/passwd", "a\\..\\b"):
        with pytest.raises(CharacterError, match="character name"):
            store.avatar(name)
