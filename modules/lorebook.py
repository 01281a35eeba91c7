"""A character card's lorebook (`character_book`, "world info"): entries whose keys, found in the recent
chat, put their text into the prompt.

The card format is the Character Card V2 spec's; how entries are matched and placed follows SillyTavern
(public/scripts/world-info.js), which writes most cards, so a card behaves here as it does there:

* the text scanned is the newest `scan_depth` messages (the book's `scan_depth`, else 2, SillyTavern's
  default; an entry's `extensions.scan_depth` overrides it), each as `Name: text`;
* a key matches as a substring, case-insensitive unless the entry is `case_sensitive`, as a whole word
  with `extensions.match_whole_words`; a key written `/pattern/flags` is a regular expression (run with
  a time limit, so a pathological pattern cannot stall the reply);
* `constant` entries always apply; disabled ones (`enabled: false`) never; `selective` entries with
  `secondary_keys` also need those, combined by `extensions.selectiveLogic` (0 AND ANY, 1 NOT ALL,
  2 NOT ANY, 3 AND ALL); `@@activate` / `@@dont_activate` on an entry's first line force it either way;
  `extensions.probability` (with `useProbability`) is the percent chance an activated entry is used;
* with the book's `recursive_scanning`, activated entries' text is scanned too, until nothing new
  activates (not entries with `extensions.exclude_recursion`; text of `prevent_recursion` entries is
  not scanned);
* the entries' text may use at most the book's `token_budget` tokens (else 25% of the context,
  SillyTavern's default); entries with a higher `insertion_order` are kept first when it runs out;
* each goes where its position says, in ascending `insertion_order`: `before_char` before the
  character's context, `after_char` after it, or (SillyTavern's `extensions.position` 4) into the
  chat at `extensions.depth` messages from the end. SillyTavern's Author's Note positions (2, 3) are
  taken as depth 4 (its note's usual depth) and its example-message positions (5, 6) as before/after the
  context, since Parlour has neither as a separate part.

For a remote engine (which gets messages, not a prompt text) the same entries go into its messages,
with token counts estimated (4 characters a token, an 8192-token context) since only the engine has
the tokenizer.

Where Parlour differs, because its prompt has no separate message for them: an entry "at depth" (and
the card's post-history instructions, which SillyTavern sends after the chat, see
modules/character_note.py) is merged into the message at that depth: appended to the newest message for
depth 0, else put in front of the message that many from the end; its `role` is not used. On Continue
nothing is merged into the reply being continued (its text is what the user reads): what would go there
goes at the end of the message before it. Inclusion groups, sticky/cooldown/delay timers and
per-character filters are SillyTavern world-info features a card's book rarely uses; they are kept in
the card (and exported) but not applied.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, replace
from typing import Any, Callable

log = logging.getLogger(__name__)

DEFAULT_SCAN_DEPTH = 2
MAX_SCAN_DEPTH = 1000
DEFAULT_BUDGET_SHARE = 0.25
DEFAULT_AT_DEPTH = 4
MAX_RECURSION_STEPS = 10
MAX_ENTRIES = 5000
REGEX_SECONDS = 0.05  # per key and scan; a timed-out pattern counts as no match
_REGEX_KEY = re.compile(r"^/([\w\W]+?)/([gimsuy]*)$")
POSITIONS = {0: "before_char", 1: "after_char", 2: "at_depth", 3: "at_depth", 4: "at_depth", 5: "before_char",
             6: "after_char"}
AND_ANY, NOT_ALL, NOT_ANY, AND_ALL = 0, 1, 2, 3


class LorebookError(ValueError):
    """A character_book that does not have the card format's shape; the message names the entry and field."""


@dataclass(frozen=True)
class Entry:
    keys: tuple[str, ...]
    content: str
    secondary_keys: tuple[str, ...] = ()
    selective: bool = False
    logic: int = AND_ANY
    constant: bool = False
    enabled: bool = True
    order: int = 100
    position: str = "before_char"
    depth: int = DEFAULT_AT_DEPTH
    scan_depth: int | None = None
    case_sensitive: bool = False
    whole_words: bool = False
    probability: float = 100.0
    exclude_recursion: bool = False
    prevent_recursion: bool = False
    force: bool | None = None  # @@activate (True) / @@dont_activate (False)


@dataclass(frozen=True)
class Activated:
    """What a scan puts into the prompt: texts before and after the context, and texts at depths."""

    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    at_depth: tuple[tuple[int, str], ...] = ()


def _field(entry: dict[str, Any], where: str, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = entry.get(name, default)
    if value is None:
        return default
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool) and bool not in (
            kind if isinstance(kind, tuple) else (kind,))):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise LorebookError(f"{where}: {name!r} must be {names}, not {type(value).__name__}")
    return value


def _texts(entry: dict[str, Any], where: str, name: str) -> tuple[str, ...]:
    value = entry.get(name) or []
    if isinstance(value, str):  # some editors write a single key as text
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LorebookError(f"{where}: {name!r} must be a list of texts")
    return tuple(v for v in value if v.strip())


def _entry(raw: Any, index: int) -> Entry:
    where = f"character_book entry {index}"
    if not isinstance(raw, dict):
        raise LorebookError(f"{where} must be an object")
    ext = raw.get("extensions") or {}
    if not isinstance(ext, dict):
        raise LorebookError(f"{where}: 'extensions' must be an object")
    content = _field(raw, where, "content", str, "")
    force = None
    lines = content.split("\n")
    while lines and lines[0].strip() in ("@@activate", "@@dont_activate"):
        force = lines.pop(0).strip() == "@@activate"
    position_code = _field(ext, where, "position", int, None)
    if position_code is not None and position_code in POSITIONS:
        position = POSITIONS[position_code]
    else:
        named = _field(raw, where, "position", str, "before_char")
        position = "after_char" if named == "after_char" else "before_char"
    depth = _field(ext, where, "depth", int, DEFAULT_AT_DEPTH)
    if position_code in (2, 3):
        depth = DEFAULT_AT_DEPTH
    case = raw.get("case_sensitive") if raw.get("case_sensitive") is not None else ext.get("case_sensitive")
    probability = _field(ext, where, "probability", (int, float), 100)
    return Entry(
        keys=_texts(raw, where, "keys"), content="\n".join(lines), secondary_keys=_texts(raw, where, "secondary_keys"),
        selective=bool(_field(raw, where, "selective", bool, False)),
        logic=_field(ext, where, "selectiveLogic", int, AND_ANY),
        constant=bool(_field(raw, where, "constant", bool, False)),
        enabled=bool(_field(raw, where, "enabled", bool, True)),
        order=_field(raw, where, "insertion_order", int, 100), position=position,
        depth=max(0, min(depth, MAX_SCAN_DEPTH)),
        scan_depth=_field(ext, where, "scan_depth", int, None),
        case_sensitive=bool(case) if isinstance(case, bool) else False,
        whole_words=bool(_field(ext, where, "match_whole_words", bool, False)),
        probability=float(probability) if _field(ext, where, "useProbability", bool, True) else 100.0,
        exclude_recursion=bool(_field(ext, where, "exclude_recursion", bool, False)),
        prevent_recursion=bool(_field(ext, where, "prevent_recursion", bool, False)),
        force=force)


@dataclass(frozen=True)
class Lorebook:
    entries: tuple[Entry, ...]
    scan_depth: int = DEFAULT_SCAN_DEPTH
    token_budget: int | None = None
    recursive: bool = False

    @classmethod
    def parse(cls, book: Any) -> "Lorebook":
        """The lorebook of a card's `character_book` object; LorebookError naming what is malformed."""
        if not isinstance(book, dict):
            raise LorebookError("character_book must be an object")
        entries = book.get("entries") or []
        if not isinstance(entries, list):
            raise LorebookError("character_book: 'entries' must be a list")
        if len(entries) > MAX_ENTRIES:
            raise LorebookError(f"character_book has {len(entries):,} entries; the limit is {MAX_ENTRIES:,}")
        where = "character_book"
        scan_depth = _field(book, where, "scan_depth", int, DEFAULT_SCAN_DEPTH)
        budget = _field(book, where, "token_budget", int, None)
        return cls(entries=tuple(_entry(raw, i) for i, raw in enumerate(entries)),
                   scan_depth=max(0, min(scan_depth, MAX_SCAN_DEPTH)),
                   token_budget=budget if budget is None or budget > 0 else None,
                   recursive=bool(_field(book, where, "recursive_scanning", bool, False)))

    def scan(self, messages: list[str], count_tokens: Callable[[str], int], context_length: int,
             rng: random.Random | None = None) -> Activated:
        """The entries `messages` (newest LAST, each `Name: text`) activate, within the token budget."""
        rng = rng or random.Random()
        newest_first = [m.strip() for m in reversed(messages)]
        budget = self.token_budget or max(1, round(DEFAULT_BUDGET_SHARE * context_length))
        candidates = sorted((e for e in self.entries if e.enabled and e.force is not False), key=lambda e: -e.order)
        chosen: list[Entry] = []
        used, recursion_text, step = 0, "", 0
        pending = True
        while pending and step <= MAX_RECURSION_STEPS:
            pending, step = False, step + 1
            taken = {id(e) for e in chosen}
            fresh = [e for e in candidates
                     if id(e) not in taken and self._activates(e, newest_first, recursion_text, step)]
            added = []
            for entry in fresh:
                if entry.probability < 100 and rng.random() * 100 > entry.probability:
                    candidates = [c for c in candidates if c is not entry]  # rolled once per scan, as SillyTavern
                    continue
                cost = count_tokens(entry.content + "\n")
                if used + cost > budget:
                    pending = False
                    break
                used += cost
                chosen.append(entry)
                added.append(entry)
            if self.recursive and added:
                more = "\n".join(e.content for e in added if not e.prevent_recursion)
                if more:
                    recursion_text = (recursion_text + "\n" + more).strip()
                    pending = True
        ordered = sorted(chosen, key=lambda e: e.order)
        return Activated(before=tuple(e.content for e in ordered if e.position == "before_char" and e.content),
                         after=tuple(e.content for e in ordered if e.position == "after_char" and e.content),
                         at_depth=tuple((e.depth, e.content) for e in ordered
                                        if e.position == "at_depth" and e.content))

    def _activates(self, entry: Entry, newest_first: list[str], recursion_text: str, step: int) -> bool:
        if entry.force or entry.constant:
            return step == 1
        if not entry.keys:
            return False
        if step > 1 and entry.exclude_recursion:
            return False
        depth = entry.scan_depth if entry.scan_depth is not None else self.scan_depth
        haystack = "\n".join(newest_first[:max(0, min(depth, MAX_SCAN_DEPTH))])
        if step > 1 or recursion_text:
            haystack += "\n" + recursion_text
        if not any(_matches(haystack, key, entry) for key in entry.keys):
            return False
        if not (entry.selective and entry.secondary_keys):
            return True
        found = [_matches(haystack, key, entry) for key in entry.secondary_keys]
        return {AND_ANY: any(found), NOT_ALL: not all(found), NOT_ANY: not any(found),
                AND_ALL: all(found)}.get(entry.logic, any(found))


def _matches(haystack: str, key: str, entry: Entry) -> bool:
    key = key.strip()
    pattern = _REGEX_KEY.match(key)
    if pattern:
        import regex

        flags = (regex.IGNORECASE if "i" in pattern.group(2) else 0) | (
            regex.MULTILINE if "m" in pattern.group(2) else 0) | (regex.DOTALL if "s" in pattern.group(2) else 0)
        try:
            found = regex.search(pattern.group(1).replace("\\/", "/"), haystack, flags, timeout=REGEX_SECONDS)
            return found is not None
        except regex.error:
            pass  # not a valid pattern: SillyTavern then matches it as plain text
        except TimeoutError:
            log.warning("lorebook key %r took longer than %s s; treated as no match", key[:60], REGEX_SECONDS)
            return False
    if not entry.case_sensitive:
        haystack, key = haystack.lower(), key.lower()
    if entry.whole_words and len(key.split()) == 1:
        return re.search(rf"(?:^|\W)({re.escape(key)})(?:$|\W)", haystack) is not None
    return key in haystack


def merge_at_depth(turns: list[dict[str, str]], inserts: list[tuple[int, str]],
                   continuing: bool = False) -> list[dict[str, str]]:
    """`turns` with each (depth, text) merged into the message `depth` from the end (0: appended to the
    newest; d: put in front of the d-th newest; past the oldest: in front of the oldest).

    `continuing`: the newest turn is a partial reply the model goes on writing (Continue). Its text is
    the start of the reply the user reads, so nothing is merged into it: what would go at depth 0 or 1
    goes at the end of the message before it (SillyTavern puts depth-0 text at depth 1 when continuing),
    or, when the partial reply is the only turn, into a user message of its own in front of it."""
    if continuing and turns:
        head, partial = list(turns[:-1]), dict(turns[-1])
        if not head:
            text = "\n\n".join(t for _, t in inserts if t)
            return ([{"role": "user", "content": text}] if text else []) + [partial]
        return merge_at_depth(head, [(max(0, depth - 1), text) for depth, text in inserts]) + [partial]
    out = [dict(t) for t in turns]
    if not out:
        return out
    for depth, text in inserts:
        if depth <= 0:
            out[-1]["content"] = f"{out[-1]['content']}\n\n{text}" if out[-1]["content"] else text
        else:
            turn = out[max(0, len(out) - depth)]
            turn["content"] = f"{text}\n\n{turn['content']}" if turn["content"] else text
    return out


def apply(options: Any, turns: list[dict[str, str]], count_tokens: Callable[[str], int],
          context_length: int) -> tuple[Any, list[dict[str, str]]]:
    """Step 2b of modules/chat.build_chat_prompt: the character's lorebook entries put into (a copy of)
    its PromptOptions and turns. (The card's post-history instructions come after the chat and its
    Character's Note, after truncation: modules/character_note.place.)"""
    from modules.chat import substitute

    def names(text: str) -> str:
        return substitute(text, options.name1, options.name2)

    inserts: list[tuple[int, str]] = []
    if options.lorebook is not None:
        scanned = [f"{options.name1 if t['role'] == 'user' else options.name2}: {t['content']}" for t in turns]
        found = options.lorebook.scan(scanned, count_tokens, context_length)
        if found.before or found.after:
            field = "system_message" if options.mode == "instruct" and options.system_message else "context"
            text = "\n".join(p for p in (*found.before, getattr(options, field), *found.after) if p)
            options = replace(options, **{field: text})
        inserts += [(depth, names(text)) for depth, text in found.at_depth]
    continuing = bool(options.continue_last and turns and turns[-1]["role"] == "assistant")
    return options, merge_at_depth(turns, inserts, continuing) if inserts else turns
