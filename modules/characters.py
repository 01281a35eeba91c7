"""Characters: `characters/<name>.yaml` (+ optional `<name>.png`) and character cards.

A character file holds `name`, `greeting` and `context` (text-generation-webui's keys), and may keep
the card fields it came from (`description`, `personality`, `scenario`, `mes_example`,
`system_prompt`) so exporting gives the card back.

Cards are TavernAI / SillyTavern PNGs (base64 JSON in a `chara` tEXt chunk; `ccv3` preferred when
present) or plain JSON, spec V1 (fields at the top level) or V2/V3 (`spec: chara_card_v2`, fields
under `data`). PNG chunks are parsed here with size limits and CRC checks, so a decompression bomb
or a gigabyte text chunk is refused before anything is decoded. An import is checked completely
before the first byte is written, and files are replaced atomically: a bad card changes nothing.

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

from modules.fileio import (FileTooLarge, atomic_write_bytes, atomic_write_text, load_yaml, os_reason,
                            read_text_limited, unusable_files)
from modules.paths import MAX_NAME, UnsafeName, check_name, safe_child

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_CARD_BYTES = 20 * 1024 * 1024  # a whole card file
MAX_TEXT_CHUNK = 2 * 1024 * 1024  # one text chunk (the card JSON, base64)
MAX_YAML_BYTES = 1024 * 1024
AVATAR_PIXELS = 128  # the thumbnail's longer side; chat avatars are shown at about 40 px
MAX_PICTURE_PIXELS = 8192 * 8192  # width x height checked from the header, before any pixel is decoded
CARD_FIELDS = ("description", "personality", "scenario", "mes_example", "system_prompt")


class CharacterError(ValueError):
    """A character or card that cannot be read, imported or saved; nothing was changed."""


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
    #: the first reply's other versions in a new chat (SillyTavern's alternate greetings)
    alternate_greetings: list[str] = field(default_factory=list)

    def to_yaml(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v or k in ("name", "greeting", "context")}
        return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=100)


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
    """`png` with its `key` tEXt chunks replaced by one holding `value` (placed before IEND)."""
    png_text_chunks(png)  # validates
    out = [PNG_SIGNATURE]
    pos = len(PNG_SIGNATURE)
    while True:
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        whole = png[pos:pos + 12 + length]
        pos += 12 + length
        if kind == b"tEXt" and whole[8:8 + length].split(b"\x00", 1)[0] in (b"chara", b"ccv3"):
            continue  # drop old card data
        if kind == b"IEND":
            out.append(_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value))
            out.append(whole)
            return b"".join(out)
        out.append(whole)


# -- cards ---------------------------------------------------------------------------------------------
def card_from_bytes(data: bytes) -> dict[str, Any]:
    """The card JSON from a PNG or a JSON file."""
    if data.startswith(PNG_SIGNATURE):
        texts = png_text_chunks(data)
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
        card = json.loads(text)
    except ValueError as exc:
        raise CharacterError(f"the card is not valid JSON: {exc}") from exc
    if not isinstance(card, dict):
        raise CharacterError("the card must be a JSON object")
    return card


def character_from_card(card: dict[str, Any]) -> Character:
    """A Character from card JSON (V1 fields at the top, V2/V3 under `data`)."""
    spec = card.get("spec")
    if spec in ("chara_card_v2", "chara_card_v3"):
        data = card.get("data")
        if not isinstance(data, dict):
            raise CharacterError(f"a {spec} card needs its fields under 'data'")
    elif spec is None:
        data = card
    else:
        raise CharacterError(f"unknown card spec {str(spec)[:40]!r}")
    name = data.get("name") or data.get("char_name")
    if not isinstance(name, str) or not name.strip():
        raise CharacterError("the card has no name")
    try:
        name = check_name(name)
    except UnsafeName as exc:
        raise CharacterError(f"the card's name cannot be a file name: {exc}") from exc
    values: dict[str, str] = {}
    for key in (*CARD_FIELDS, "first_mes"):
        value = data.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise CharacterError(f"the card's {key!r} must be text, not {type(value).__name__}")
        values[key] = value.strip()
    parts = [values["system_prompt"], values["description"]]
    if values["personality"]:
        parts.append(f"{{{{char}}}}'s personality: {values['personality']}")
    if values["scenario"]:
        parts.append(f"Scenario: {values['scenario']}")
    if values["mes_example"]:
        parts.append(values["mes_example"])
    context = "\n\n".join(p for p in parts if p)
    return Character(name=name, greeting=values["first_mes"], context=context,
                     **{k: values[k] for k in CARD_FIELDS})


def card_v2(character: Character) -> dict[str, Any]:
    """A character as a chara_card_v2 object."""
    description = character.description or (character.context if not character.system_prompt else "")
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": character.name, "description": description, "personality": character.personality,
        "scenario": character.scenario, "first_mes": character.greeting, "mes_example": character.mes_example,
        "system_prompt": character.system_prompt, "creator_notes": "", "post_history_instructions": "",
        "alternate_greetings": list(character.alternate_greetings), "tags": [], "creator": "", "character_version": "",
        "extensions": {"parlour": {"context": character.context}}}}


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
        if not isinstance(data, dict):
            raise CharacterError(f"character {name!r}: the file must hold a mapping")
        values: dict[str, Any] = {}
        for key in Character.__dataclass_fields__:
            value = data.get(key, "")
            if value is None:
                value = ""
            if key == "alternate_greetings":
                value = value or []
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise CharacterError(f"character {name!r}: 'alternate_greetings' must be a list of texts")
                values[key] = [v for v in value if v.strip()]
                continue
            if not isinstance(value, (str, int, float)):
                raise CharacterError(f"character {name!r}: {key!r} must be text")
            values[key] = str(value)
        values["name"] = values["name"].strip() or name
        return Character(**values)

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
            raise CharacterError(f"a character named {character.name!r} already exists")
        if picture is not None:
            png_text_chunks(picture)
        png_path = self._path(character.name, ".png")
        old_picture = png_path.read_bytes() if picture is not None and png_path.is_file() else None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if picture is not None:
                atomic_write_bytes(png_path, picture)
            atomic_write_text(path, character.to_yaml())
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

    def free_name(self, name: str) -> str:
        """`name`, or `name (2)`, `name (3)`, ...: the first that no character has."""
        taken = {n.lower() for n in self.names()}
        candidate, n = name, 1
        while candidate.lower() in taken:
            n += 1
            suffix = f" ({n})"
            candidate = name[:MAX_NAME - len(suffix)].rstrip(" .") + suffix
        return candidate

    def import_card(self, data: bytes, overwrite: bool = False) -> Character:
        """Import a PNG or JSON card; the PNG becomes the character's picture."""
        character = character_from_card(card_from_bytes(data))
        self.save(character, picture=data if data.startswith(PNG_SIGNATURE) else None, overwrite=overwrite)
        return character

    def export_card(self, name: str, png: bool = True) -> bytes:
        """A V2 card: the picture (or a blank one) with the JSON in its `chara` chunk, or the JSON alone."""
        character = self.load(name)
        text = json.dumps(card_v2(character), ensure_ascii=False)
        if not png:
            return text.encode("utf-8")
        picture = self.picture(name)
        base = picture.read_bytes() if picture is not None else blank_png()
        return png_with_text(base, "chara", base64.b64encode(text.encode("utf-8")))
