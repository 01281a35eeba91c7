"""Characters: `characters/<name>.yaml` (+ optional `<name>.png`) and character cards.

A character file holds `name`, `greeting` and `context` (text-generation-webui's keys), and keeps
the card fields it came from so exporting gives the card back: `description`, `personality`,
`scenario`, `mes_example`, `system_prompt`, and what Parlour also uses: `alternate_greetings` (the
first reply's other versions in a new chat, `greetings()`), `character_book` (its lorebook, applied by
modules/lorebook.py), `post_history_instructions` (after the chat), the Character's Note in
`extensions.depth_prompt` (into the chat at a depth, modules/character_note.py); `creator_notes` and
`tags` (shown and edited in the Character tab, never sent to the model); and, kept for export,
`creator`, `character_version`, the card's other `extensions` and any other field (`card_extra`, e.g.
V3's `nickname`, `group_only_greetings`, `assets`).

Cards are TavernAI / SillyTavern PNGs (base64 JSON in a `chara` tEXt chunk; `ccv3` preferred when
present) or plain JSON: spec V1 (fields at the top level; Pygmalion's `char_name`/`char_persona`/...
too) or V2/V3 (`spec: chara_card_v2`/`chara_card_v3`, fields under `data`). Export writes what
SillyTavern writes: a V2 `chara` chunk and the same card as V3 in a `ccv3` chunk. PNG chunks are
parsed here with size limits and CRC checks, so a decompression bomb or a gigabyte text chunk is
refused before anything is decoded. An import is checked completely before the first byte is
written, and files are replaced atomically: a bad card changes nothing. A card whose name is taken is
refused unless the caller says to overwrite it or gives it a free name (`free_name`).

Pictures become chat avatars as small re-encoded thumbnails in `data:` URLs (`avatar_data_url`):
no file route is opened, so no request can name a path; the picture is found only through
`safe_child` in this folder; re-encoding drops the card's text chunks (the avatar stays a few KB
however big the card) and a file that is not a decodable PNG gives no avatar, never a broken page.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modules.fileio import (MAX_JSON_DEPTH, FileTooLarge, atomic_write_bytes, atomic_write_text, json_depth,
                            load_json, load_yaml, os_reason, read_text_limited, unusable_files)
from modules import character_note
from modules.character_note import CharacterNote
from modules.lorebook import Lorebook, LorebookError
from modules.paths import MAX_NAME, UnsafeName, check_name, safe_child

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_CARD_BYTES = 20 * 1024 * 1024  # a whole card file
MAX_TEXT_CHUNK = 2 * 1024 * 1024  # one text chunk (the card JSON, base64)
MAX_YAML_BYTES = 8 * 1024 * 1024  # room for a big lorebook (a card's text chunk may hold 2 MB of base64)
AVATAR_PIXELS = 128  # the thumbnail's longer side; chat avatars are shown at about 40 px
MAX_PICTURE_PIXELS = 8192 * 8192  # width x height checked from the header, before any pixel is decoded
CARD_FIELDS = ("description", "personality", "scenario", "mes_example", "system_prompt")
#: card fields Parlour keeps as text (besides CARD_FIELDS and first_mes)
TEXT_FIELDS = ("post_history_instructions", "creator_notes", "creator", "character_version")
#: what `data` holds in a card that Parlour reads itself; every other key goes to `card_extra`
KNOWN_DATA = {"name", "first_mes", "alternate_greetings", "character_book", "tags", "extensions",
              *CARD_FIELDS, *TEXT_FIELDS}
MAX_GREETINGS = 200


class CharacterError(ValueError):
    """A character or card that cannot be read, imported or saved; nothing was changed."""


class CharacterExists(CharacterError):
    """A card whose name a character already has: import it with overwrite=True, or under `suggestion`."""

    def __init__(self, name: str, suggestion: str) -> None:
        super().__init__(f"a character named {name!r} already exists")
        self.name, self.suggestion = name, suggestion


@dataclass
class Character:
    name: str
    greeting: str = ""
    context: str = ""
    description: str = ""
    personality: str = ""
    scenario: str = ""
    mes_example: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    creator_notes: str = ""
    creator: str = ""
    character_version: str = ""
    alternate_greetings: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    character_book: dict[str, Any] | None = None
    extensions: dict[str, Any] = field(default_factory=dict)
    card_extra: dict[str, Any] = field(default_factory=dict)

    def to_yaml(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v or k in ("name", "greeting", "context")}
        return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=100)

    def character_note(self) -> CharacterNote:
        """The card's Character's Note (SillyTavern's `extensions.depth_prompt`); empty without one."""
        return character_note.parse(self.extensions.get("depth_prompt"))

    def lorebook(self) -> Lorebook | None:
        """The character's lorebook, or None without one (CharacterError if it is malformed)."""
        if not self.character_book:
            return None
        try:
            return Lorebook.parse(self.character_book)
        except LorebookError as exc:
            raise CharacterError(f"character {self.name!r}: {exc}") from exc


def greetings(character: Character, name1: str) -> list[str]:
    """The first reply of a new chat and its other versions (the card's alternate greetings), with the
    names put in; empty without a greeting."""
    from modules.chat import substitute

    texts = [t for t in [character.greeting, *character.alternate_greetings] if t and t.strip()]
    return [substitute(t, name1, character.name) for t in texts]


def add_greetings(store: Any, user: str, chat_id: int, character: Character, name1: str) -> None:
    """Open a new chat with the character's greeting as its first reply and the alternate greetings as
    that reply's other versions (browsed with < > like regenerated ones); the greeting is shown."""
    texts = greetings(character, name1)
    ids = [store.add_message(user, chat_id, "assistant", text, parent_id=None, meta={"greeting": i})
           for i, text in enumerate(texts)]
    if len(ids) > 1:
        store.set_leaf(user, chat_id, ids[0])


# -- PNG chunks -------------------------------------------------------------------------------------
def png_text_chunks(data: bytes) -> dict[str, bytes]:
    """The tEXt chunks of a PNG as {keyword: value}; CharacterError for anything malformed or too big."""
    if len(data) > MAX_CARD_BYTES:
        raise CharacterError(f"the card is {len(data):,} bytes; the limit is {MAX_CARD_BYTES:,}")
    if not data.startswith(PNG_SIGNATURE):
        raise CharacterError("not a PNG file (bad signature)")
    texts: dict[str, bytes] = {}
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise CharacterError("the PNG is truncated (no IEND chunk)")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind in (b"tEXt", b"iTXt", b"zTXt") and length > MAX_TEXT_CHUNK:
            raise CharacterError(f"a PNG text chunk is {length:,} bytes; the limit is {MAX_TEXT_CHUNK:,}")
        end = pos + 8 + length
        if end + 4 > len(data):
            raise CharacterError("the PNG is truncated (a chunk runs past the end of the file)")
        body = data[pos + 8:end]
        (crc,) = struct.unpack(">I", data[end:end + 4])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise CharacterError(f"the PNG is corrupt (bad checksum in a {kind.decode('latin-1')} chunk)")
        if kind == b"tEXt":
            key, sep, value = body.partition(b"\x00")
            if sep:
                texts[key.decode("latin-1")] = value
        if kind == b"IEND":
            return texts
        pos = end + 4


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def blank_png() -> bytes:
    """A 1x1 grey PNG, the picture of a card exported from a character without one."""
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00\x80\x80\x80")) + \
        _chunk(b"IEND", b"")


def png_with_text(png: bytes, key: str, value: bytes) -> bytes:
    """`png` with its card chunks (`chara`, `ccv3`) replaced by one `key` tEXt chunk holding `value`."""
    return png_with_texts(png, {key: value})


def png_with_texts(png: bytes, texts: dict[str, bytes]) -> bytes:
    """`png` with its card chunks (`chara`, `ccv3`) replaced by these tEXt chunks (placed before IEND)."""
    png_text_chunks(png)  # validates
    out = [PNG_SIGNATURE]
    pos = len(PNG_SIGNATURE)
    while True:
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        whole = png[pos:pos + 12 + length]
        pos += 12 + length
        if kind == b"tEXt" and whole[8:8 + length].split(b"\x00", 1)[0].lower() in (b"chara", b"ccv3"):
            continue  # drop old card data
        if kind == b"IEND":
            out.extend(_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value) for key, value in texts.items())
            out.append(whole)
            return b"".join(out)
        out.append(whole)


# -- cards ---------------------------------------------------------------------------------------------
def card_from_bytes(data: bytes) -> dict[str, Any]:
    """The card JSON from a PNG or a JSON file; CharacterError with one line for anything else."""
    if data.startswith(PNG_SIGNATURE):
        texts = {k.lower(): v for k, v in png_text_chunks(data).items()}
        raw = texts.get("ccv3") or texts.get("chara")
        if raw is None:
            raise CharacterError("the PNG holds no character card (no 'chara' text chunk)")
        try:
            text = base64.b64decode(raw, validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise CharacterError(f"the card's 'chara' chunk is not base64 JSON: {exc}") from exc
    else:
        if len(data) > MAX_CARD_BYTES:
            raise CharacterError(f"the card is {len(data):,} bytes; the limit is {MAX_CARD_BYTES:,}")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CharacterError("the card is neither a PNG nor UTF-8 JSON") from exc
    try:
        card = load_json(text, "the card")
    except ValueError as exc:
        raise CharacterError(str(exc)) from None
    if not isinstance(card, dict):
        raise CharacterError("the card must be a JSON object")
    return card


def _text(data: dict[str, Any], key: str, *fallbacks: str) -> str:
    for name in (key, *fallbacks):
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise CharacterError(f"the card's {name!r} must be text, not {type(value).__name__}")
        return value.strip()
    return ""


def _text_list(data: dict[str, Any], key: str, limit: int = MAX_GREETINGS) -> list[str]:
    value = data.get(key)
    if value is None or value == "":
        return []
    if isinstance(value, str):  # SillyTavern accepts a single greeting, or comma-separated tags, as text
        value = [t.strip() for t in value.split(",")] if key == "tags" else [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CharacterError(f"the card's {key!r} must be a list of texts")
    if len(value) > limit:
        raise CharacterError(f"the card's {key!r} has {len(value):,} items; the limit is {limit:,}")
    return [v for v in value if v.strip()]


def character_from_card(card: dict[str, Any]) -> Character:
    """A Character from card JSON (V1 fields at the top, V2/V3 under `data`), keeping every field."""
    spec = card.get("spec")
    if spec in ("chara_card_v2", "chara_card_v3"):
        data = card.get("data")
        if not isinstance(data, dict):
            raise CharacterError(f"a {spec} card needs its fields under 'data'")
    elif spec is None:
        data = card
    else:
        raise CharacterError(f"unknown card spec {str(spec)[:40]!r}")
    if json_depth(data) > MAX_JSON_DEPTH:
        raise CharacterError(f"the card is nested deeper than {MAX_JSON_DEPTH} levels")
    name = data.get("name") or data.get("char_name")
    if not isinstance(name, str) or not name.strip():
        raise CharacterError("the card has no name")
    try:
        name = check_name(name)
    except UnsafeName as exc:
        raise CharacterError(f"the card's name cannot be a file name: {exc}") from exc
    pygmalion = spec is None and "char_name" in data  # Pygmalion / old gradio cards
    values = {"description": _text(data, "description", *(("char_persona",) if pygmalion else ())),
              "personality": _text(data, "personality"),
              "scenario": _text(data, "scenario", *(("world_scenario",) if pygmalion else ())),
              "mes_example": _text(data, "mes_example", *(("example_dialogue",) if pygmalion else ())),
              "system_prompt": _text(data, "system_prompt")}
    greeting = _text(data, "first_mes", *(("char_greeting",) if pygmalion else ()))
    extensions = data.get("extensions") or {}
    if not isinstance(extensions, dict):
        raise CharacterError("the card's 'extensions' must be an object")
    book = data.get("character_book") or None
    if book is not None:
        try:
            Lorebook.parse(book)  # checked now: a broken book is refused at import, not at the first reply
        except LorebookError as exc:
            raise CharacterError(f"the card's {exc}") from exc
    # SillyTavern's {{original}} in a card's system prompt stands for the system prompt the card
    # overrides. Parlour has none beside the character's context (a System message set in the UI
    # replaces the context whole), so the macro is left out of the context; the field keeps it for export.
    parts = [values["system_prompt"].replace("{{original}}", "").strip(), values["description"]]
    if values["personality"]:
        parts.append(f"{{{{char}}}}'s personality: {values['personality']}")
    if values["scenario"]:
        parts.append(f"Scenario: {values['scenario']}")
    if values["mes_example"]:
        parts.append(values["mes_example"])
    kept = (extensions.get("parlour") or {}).get("context") if isinstance(extensions.get("parlour"), dict) else None
    context = kept.strip() if isinstance(kept, str) and kept.strip() else "\n\n".join(p for p in parts if p)
    consumed = KNOWN_DATA | ({"creatorcomment"} if spec is None else set()) | (
        {"char_name", "char_persona", "char_greeting", "world_scenario", "example_dialogue"} if pygmalion else set())
    extra = {k: v for k, v in data.items() if k not in consumed}
    return Character(
        name=name, greeting=greeting, context=context, **values,
        post_history_instructions=_text(data, "post_history_instructions"),
        creator_notes=_text(data, "creator_notes", *(("creatorcomment",) if spec is None else ())),
        creator=_text(data, "creator"), character_version=_text(data, "character_version"),
        alternate_greetings=_text_list(data, "alternate_greetings"), tags=_text_list(data, "tags", 1000),
        character_book=book, extensions={k: v for k, v in extensions.items() if k != "parlour"}, card_extra=extra)


def card_v2(character: Character) -> dict[str, Any]:
    """A character as a chara_card_v2 object, with every field it was imported with."""
    description = character.description or (character.context if not character.system_prompt else "")
    data = {**character.card_extra,
            "name": character.name, "description": description, "personality": character.personality,
            "scenario": character.scenario, "first_mes": character.greeting, "mes_example": character.mes_example,
            "creator_notes": character.creator_notes, "system_prompt": character.system_prompt,
            "post_history_instructions": character.post_history_instructions,
            "alternate_greetings": list(character.alternate_greetings), "tags": list(character.tags),
            "creator": character.creator, "character_version": character.character_version,
            "extensions": {**character.extensions, "parlour": {"context": character.context}}}
    if character.character_book:
        data["character_book"] = character.character_book
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": data}


def card_v3(character: Character) -> dict[str, Any]:
    """The same card as chara_card_v3 (what SillyTavern writes in a PNG's `ccv3` chunk)."""
    card = card_v2(character)
    card["data"].setdefault("group_only_greetings", [])
    return {**card, "spec": "chara_card_v3", "spec_version": "3.0"}


def avatar_data_url(data: bytes, name: str = "picture") -> str:
    """A PNG picture as a small re-encoded PNG thumbnail in a `data:image/png` URL; CharacterError if it
    is not a PNG Pillow can decode, or is absurdly large."""
    from PIL import Image, UnidentifiedImageError

    if not data.startswith(PNG_SIGNATURE):
        raise CharacterError(f"the picture of {name!r} is not a PNG")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            width, height = image.size
            if width * height > MAX_PICTURE_PIXELS:
                raise CharacterError(f"the picture of {name!r} is {width}x{height} pixels; the limit is "
                                     f"{MAX_PICTURE_PIXELS:,} pixels")
            image.thumbnail((AVATAR_PIXELS, AVATAR_PIXELS))
            small = image.convert("RGBA")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise CharacterError(f"the picture of {name!r} is not a readable PNG image") from exc
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


class CharacterStore:
    """The `characters/` folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._avatars: dict[tuple[str, int, int], str] = {}

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted((p.stem for p in self.root.glob("*.yaml") if not p.name.startswith(".")), key=str.lower)

    def problems(self) -> dict[str, str]:
        """{name: why} for every character file that cannot be used; the others load as usual."""
        return unusable_files(self.names(), self.load, CharacterError)

    def _path(self, name: str, suffix: str) -> Path:
        try:
            return safe_child(self.root, name, suffix)
        except UnsafeName as exc:
            raise CharacterError(f"character name: {exc}") from exc

    def load(self, name: str) -> Character:
        path = self._path(name, ".yaml")
        try:
            data = load_yaml(read_text_limited(path, MAX_YAML_BYTES))
        except FileNotFoundError as exc:
            raise CharacterError(f"character {name!r} not found") from exc
        except (FileTooLarge, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise CharacterError(f"character {name!r}: {exc}") from exc
        except RecursionError:
            raise CharacterError(f"character {name!r}: the file is nested too deeply") from None
        if not isinstance(data, dict):
            raise CharacterError(f"character {name!r}: the file must hold a mapping")
        return _from_mapping(data, name)

    def picture(self, name: str) -> Path | None:
        path = self._path(name, ".png")
        return path if path.is_file() else None

    def avatar(self, name: str) -> str | None:
        """The character's picture as a thumbnail `data:` URL, None without one; CharacterError if unreadable.
        Cached per file version (name, size, mtime) on this store, so redraws do not re-encode it."""
        path = self.picture(name)
        if path is None:
            return None
        stat = path.stat()
        key = (name, stat.st_size, stat.st_mtime_ns)
        if key not in self._avatars:
            if stat.st_size > MAX_CARD_BYTES:
                raise CharacterError(f"the picture of {name!r} is {stat.st_size:,} bytes; the limit is "
                                     f"{MAX_CARD_BYTES:,}")
            if len(self._avatars) >= 64:  # a bounded cache: characters are few, edits make new keys
                self._avatars.clear()
            self._avatars[key] = avatar_data_url(path.read_bytes(), name)
        return self._avatars[key]

    def save(self, character: Character, picture: bytes | None = None, overwrite: bool = True) -> Path:
        """Write `<name>.yaml` (and `<name>.png`); both checked before either is written."""
        path = self._path(character.name, ".yaml")
        if path.exists() and not overwrite:
            raise CharacterExists(character.name, self.free_name(character.name))
        if picture is not None:
            png_text_chunks(picture)
        text = character.to_yaml()
        if len(text.encode("utf-8")) > MAX_YAML_BYTES:
            raise CharacterError(f"character {character.name!r} would be a {len(text):,}-byte file; the limit is "
                                 f"{MAX_YAML_BYTES:,}")
        png_path = self._path(character.name, ".png")
        old_picture = png_path.read_bytes() if picture is not None and png_path.is_file() else None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if picture is not None:
                atomic_write_bytes(png_path, picture)
            atomic_write_text(path, text)
        except OSError as exc:
            # The YAML failed after the picture was replaced: put the old picture back (or remove the
            # new one), so a failed save leaves the character exactly as it was.
            if picture is not None:
                try:
                    if old_picture is not None:
                        atomic_write_bytes(png_path, old_picture)
                    else:
                        png_path.unlink(missing_ok=True)
                except OSError:
                    pass  # the same fault (a read-only folder) means the picture was not written either
            raise CharacterError(f"character {character.name!r} was not saved: {exc}") from exc
        return path

    def delete(self, name: str) -> None:
        """Remove `<name>.yaml` and its picture; CharacterError if there is no such character."""
        path = self._path(name, ".yaml")
        if not path.is_file():
            raise CharacterError(f"character {name!r} not found")
        try:
            path.unlink()
            self._path(name, ".png").unlink(missing_ok=True)
        except OSError as exc:
            raise CharacterError(f"character {name!r} was not deleted: {os_reason(exc)}") from exc

    def import_card(self, data: bytes, overwrite: bool = False, name: str | None = None) -> Character:
        """Import a PNG or JSON card; the PNG becomes the character's picture. `name` imports it under that
        name instead of the card's. A name that is taken raises CharacterExists (which suggests a free
        one) unless `overwrite`. The card is checked whole first: a bad one changes nothing."""
        character = character_from_card(card_from_bytes(data))
        if name is not None:
            try:
                character.name = check_name(name)
            except UnsafeName as exc:
                raise CharacterError(f"character name: {exc}") from exc
        if not overwrite and self._path(character.name, ".yaml").exists():
            raise CharacterExists(character.name, self.free_name(character.name))
        self.save(character, picture=data if data.startswith(PNG_SIGNATURE) else None, overwrite=overwrite)
        return character

    def import_card_name(self, data: bytes) -> str:
        """The name the card in `data` carries (CharacterError if it is not a usable card)."""
        return character_from_card(card_from_bytes(data)).name

    def free_name(self, name: str) -> str:
        """`name`, or `name (2)`, `name (3)`, ... : the first that no character has."""
        taken = {n.lower() for n in self.names()}
        candidate, n = name, 1
        while candidate.lower() in taken:
            n += 1
            suffix = f" ({n})"
            candidate = name[:MAX_NAME - len(suffix)].rstrip(" .") + suffix
        return candidate

    def export_card(self, name: str, png: bool = True) -> bytes:
        """A card as SillyTavern writes one: the picture (or a blank one) with the V2 JSON in a `chara`
        chunk and the V3 JSON in a `ccv3` chunk, or the V2 JSON alone."""
        character = self.load(name)
        text = json.dumps(card_v2(character), ensure_ascii=False)
        if not png:
            return text.encode("utf-8")
        picture = self.picture(name)
        base = picture.read_bytes() if picture is not None else blank_png()
        v3 = json.dumps(card_v3(character), ensure_ascii=False)
        return png_with_texts(base, {"chara": base64.b64encode(text.encode("utf-8")),
                                     "ccv3": base64.b64encode(v3.encode("utf-8"))})


def _from_mapping(data: dict[str, Any], name: str) -> Character:
    """A Character from its YAML mapping; CharacterError naming a field of the wrong kind."""
    values: dict[str, Any] = {}
    for key, spec in Character.__dataclass_fields__.items():
        value = data.get(key)
        if value is None:
            continue
        if spec.type == "list[str]":
            if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
                raise CharacterError(f"character {name!r}: {key!r} must be a list of texts")
            values[key] = [str(v) for v in value]
        elif key in ("character_book", "extensions", "card_extra"):
            if not isinstance(value, dict):
                raise CharacterError(f"character {name!r}: {key!r} must be a mapping")
            values[key] = value
        else:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise CharacterError(f"character {name!r}: {key!r} must be text")
            values[key] = str(value)
    values["name"] = str(values.get("name", "")).strip() or name
    character = Character(**values)
    character.lorebook()  # a hand-edited book that cannot work is reported with the file, not at a reply
    return character
