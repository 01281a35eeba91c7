"""Making and changing characters in the browser: the Character panel's logic, without Gradio.

    form = form_of(app.characters.load("Chiara"))
    saved = save(app.characters, replace(form, scenario="A rainy night."), original="Chiara", chats=app.store)

Everything goes through CharacterStore's public methods (load, save, picture, delete, free_name), so
a character made here is the same YAML + PNG a hand-written or imported one is, and the next reply
reads it (prompts load the character every turn).

The form has the fields people write by hand: name, greeting and alternate greetings, context (persona),
scenario and example dialogue; the Character's Note (text, depth, role: put into the chat at that depth
on every reply, modules/character_note.py; kept in the card's `extensions.depth_prompt`, SillyTavern's
place for it, so it exports as SillyTavern reads it); and what the model never sees, the tags and the
creator's notes (a downloaded card's advice to whoever uses it). A prompt reads one text, the
character's `context`; a card's separate fields are folded into it the way a card import folds them
(`character_from_card`), so a character keeps both: the parts (for the form and for export) and the
context (for the model). A character written for text-generation-webui has only `context`: the form
shows it as the context, and it stays that way unless a scenario or example dialogue is added. Fields
the form does not show (a card's personality, system prompt, and whatever else the file holds) are kept
as they were.

Pictures are decoded by Pillow (PNG, JPEG, WebP, GIF), bounded in pixels before decoding, cropped to
the centre square and stored as a PNG of at most PICTURE_PIXELS a side (chat avatars are made from it).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from typing import Any

from modules import character_note
from modules.characters import (CARD_FIELDS, MAX_CARD_BYTES, MAX_PICTURE_PIXELS, Character, CharacterError,
                                CharacterStore, character_from_card)
from modules.paths import UnsafeName, check_name

PICTURE_PIXELS = 512
#: a line holding only this separates alternate greetings in the form's one text box
GREETING_SEPARATOR = "---"
MAX_TAGS = 1000  # as many as an imported card may have


@dataclass(frozen=True)
class CharacterForm:
    """What the Character panel edits."""

    name: str
    greeting: str = ""
    alternate_greetings: tuple[str, ...] = ()
    context: str = ""
    scenario: str = ""
    example_dialogue: str = ""
    note: str = ""  # the Character's Note
    note_depth: int = character_note.DEFAULT_DEPTH
    note_role: str = character_note.DEFAULT_ROLE
    tags: tuple[str, ...] = ()
    creator_notes: str = ""


def _card_style(character: Character) -> bool:
    """The character keeps a card's parts (it was imported or made here with a scenario or examples)."""
    return any(getattr(character, name) for name in CARD_FIELDS)


def form_of(character: Character) -> CharacterForm:
    """The form's fields for a saved character."""
    if _card_style(character):
        context, scenario, examples = character.description, character.scenario, character.mes_example
    else:
        context, scenario, examples = character.context, "", ""
    note = character.character_note()
    return CharacterForm(character.name, character.greeting, tuple(character.alternate_greetings), context,
                         scenario, examples, note=note.text, note_depth=note.depth, note_role=note.role,
                         tags=tuple(character.tags), creator_notes=character.creator_notes)


def blank_form() -> CharacterForm:
    return CharacterForm(name="", context="{{char}} is ...")


def split_greetings(text: str) -> tuple[str, ...]:
    """The form's alternate-greetings box: greetings separated by a line holding only `---`."""
    blocks, current = [], []
    for line in (text or "").splitlines():
        if line.strip() == GREETING_SEPARATOR:
            blocks.append("\n".join(current))
            current = []
        else:
            current.append(line)
    blocks.append("\n".join(current))
    return tuple(b.strip() for b in blocks if b.strip())


def join_greetings(greetings: tuple[str, ...] | list[str]) -> str:
    return f"\n{GREETING_SEPARATOR}\n".join(greetings)


def split_tags(text: str) -> tuple[str, ...]:
    """The form's tags box: comma-separated, blanks and repeats left out (as SillyTavern's tag list)."""
    return tuple(dict.fromkeys(t.strip() for t in (text or "").split(",") if t.strip()))


def join_tags(tags: tuple[str, ...] | list[str]) -> str:
    return ", ".join(tags)


def character_of(form: CharacterForm, base: Character | None = None) -> Character:
    """The character the form describes, keeping what `base` (the saved character) has beyond the form.
    CharacterError for a Character's Note depth or role that cannot be used, or too many tags."""
    base = base or Character(name=form.name)
    greetings = [g for g in form.alternate_greetings if g.strip()]
    try:
        note = character_note.checked(form.note, form.note_depth, form.note_role)
    except ValueError as exc:
        raise CharacterError(str(exc)) from None
    tags = [t.strip() for t in form.tags if t.strip()]
    if len(tags) > MAX_TAGS:
        raise CharacterError(f"a character may have {MAX_TAGS:,} tags, not {len(tags):,}")
    # shown to the user only, never to the model; kept in the card for export
    base = replace(base, tags=tags, creator_notes=form.creator_notes.strip(),
                   extensions=character_note.with_note(base.extensions, note))
    if form.scenario.strip() or form.example_dialogue.strip() or _card_style(base):
        parts = {"description": form.context.strip(), "personality": base.personality,
                 "scenario": form.scenario.strip(), "mes_example": form.example_dialogue.strip(),
                 "system_prompt": base.system_prompt}
        folded = character_from_card({"name": form.name, **parts})  # the one folding rule, as at import
        return replace(base, name=folded.name, greeting=form.greeting.strip(), context=folded.context,
                       alternate_greetings=greetings, **parts)
    return replace(base, name=form.name, greeting=form.greeting.strip(), context=form.context.strip(),
                   alternate_greetings=greetings)


def _checked_name(name: str) -> str:
    if not (name or "").strip():
        raise CharacterError("give the character a name first")
    try:
        return check_name(name)
    except UnsafeName as exc:
        raise CharacterError(f"character name: {exc}") from exc


def save(store: CharacterStore, form: CharacterForm, original: str | None = None, picture: bytes | None = None,
         chats: Any = None) -> Character:
    """Save the form as a character. `original`: the character being edited (None: a new one); a new
    name renames it (its picture, and every user's chats with it if `chats`, the chat store, is given).
    `picture`: a new picture (PNG bytes from `square_picture`; None keeps the one it has).
    A name another character has is refused: nothing is overwritten by accident."""
    name = _checked_name(form.name)
    form = replace(form, name=name)
    renaming = bool(original) and original != name
    taken = {n.lower(): n for n in store.names()}
    if (not original or renaming) and name.lower() in taken and taken[name.lower()] != original:
        raise CharacterError(f"a character named {taken[name.lower()]!r} already exists: pick another name")
    base = store.load(original) if original else None
    character = character_of(form, base)
    if picture is None and renaming:
        old = store.picture(original)  # type: ignore[arg-type]
        picture = old.read_bytes() if old is not None else None
    store.save(character, picture=picture, overwrite=True)
    if renaming:
        store.delete(original)  # type: ignore[arg-type]
        if chats is not None:
            chats.rename_character(original, name)
    return character


def duplicate(store: CharacterStore, name: str) -> str:
    """A copy of a character (and its picture) under the first free name, `NAME (2)`, ...; returns it."""
    character = store.load(name)
    copy_name = store.free_name(character.name)
    picture = store.picture(name)
    store.save(replace(character, name=copy_name), picture=picture.read_bytes() if picture is not None else None,
               overwrite=False)
    return copy_name


def delete(store: CharacterStore, name: str) -> None:
    """Delete a character's YAML and picture (its chats stay in the store, listed under its name)."""
    store.delete(name)


def square_picture(data: bytes, size: int = PICTURE_PIXELS) -> bytes:
    """Any picture Pillow reads, cropped to its centre square and scaled to at most `size` a side, as PNG."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) > MAX_CARD_BYTES:
        raise CharacterError(f"the picture is {len(data):,} bytes; the limit is {MAX_CARD_BYTES:,}")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG", "WEBP", "GIF"]) as image:
            width, height = image.size
            if width * height > MAX_PICTURE_PIXELS:
                raise CharacterError(f"the picture is {width}x{height} pixels; the limit is {MAX_PICTURE_PIXELS:,}")
            image = ImageOps.exif_transpose(image)  # a phone photo the right way up
            side = min(image.size)
            square = ImageOps.fit(image.convert("RGBA"), (side, side), centering=(0.5, 0.5))
            if side > size:
                square = square.resize((size, size), Image.Resampling.LANCZOS)
    except CharacterError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise CharacterError("the picture is not an image Parlour can read (PNG, JPEG, WebP or GIF)") from exc
    out = io.BytesIO()
    square.save(out, format="PNG", optimize=True)
    return out.getvalue()
