"""Character-card lorebooks (character_book): matching, scan depth, secondary-key logic, insertion order,
positions and budget as SillyTavern applies them, and where the entries land in a real chat prompt."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from modules.chat import PromptOptions, build_chat_prompt
from modules.lorebook import Lorebook, LorebookError, merge_at_depth
from tests.unit.test_chat_prompt import WordModel

CARD = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "cards" / "captain-v2.json").read_text())
WORDS = lambda text: len(text.split())  # noqa: E731 - one token per word


def book(*entries: dict, **fields) -> Lorebook:
    return Lorebook.parse({"entries": list(entries), **fields})


def entry(keys, content, **fields) -> dict:
    return {"keys": keys, "content": content, "enabled": True, "insertion_order": 100, "extensions": {}, **fields}


def scan(lore: Lorebook, *messages: str, context: int = 4096):
    return lore.scan(list(messages), WORDS, context, rng=random.Random(0))


def test_keys_match_case_insensitively_within_the_scan_depth():
    lore = book(entry(["Dragon"], "Dragons breathe fire."))
    assert scan(lore, "You: a dragon!").before == ("Dragons breathe fire.",)
    assert scan(lore, "You: a dragon!", "Bot: hm", "You: ok").before == ()          # 3 messages back: depth 2
    assert scan(Lorebook.parse({"entries": [entry(["Dragon"], "x")], "scan_depth": 3}),
                "You: a dragon!", "Bot: hm", "You: ok").before == ("x",)
    per_entry = book(entry(["Dragon"], "x", extensions={"scan_depth": 5}))
    assert scan(per_entry, "You: a dragon!", "b", "c", "d").before == ("x",)
    assert scan(book(entry(["Dragon"], "x", case_sensitive=True)), "You: a dragon!").before == ()


def test_whole_words_and_regex_keys():
    whole = book(entry(["cat"], "x", extensions={"match_whole_words": True}))
    assert scan(whole, "the cat sat").before == ("x",) and scan(whole, "concatenate").before == ()
    assert scan(book(entry(["cat"], "x")), "concatenate").before == ("x",)   # substring by default
    regex = book(entry(["/\\bsh(ip|ore)s?\\b/i"], "x"))
    assert scan(regex, "Ships ahead").before == ("x",) and scan(regex, "shipping").before == ()
    assert scan(book(entry(["/(a+)+$/"], "x")), "a" * 5000 + "!").before == ()  # a slow pattern: no match, no hang


@pytest.mark.parametrize("logic, secondary_found, active", [
    (0, "one", True), (0, "none", False),            # AND ANY
    (1, "one", True), (1, "all", False),             # NOT ALL
    (2, "none", True), (2, "one", False),            # NOT ANY
    (3, "all", True), (3, "one", False),             # AND ALL
])
def test_secondary_key_logic(logic, secondary_found, active):
    lore = book(entry(["sword"], "x", selective=True, secondary_keys=["red", "old"],
                      extensions={"selectiveLogic": logic}))
    words = {"one": "red", "all": "red old", "none": "blue"}[secondary_found]
    assert bool(scan(lore, f"a {words} sword").before) is active


def test_constant_disabled_and_decorators():
    lore = book(entry([], "always", constant=True), entry(["x"], "never", enabled=False),
                entry([], "@@activate\nforced"), entry(["x"], "@@dont_activate\nsuppressed"))
    assert scan(lore, "x").before == ("always", "forced")


def test_insertion_order_positions_and_depth():
    lore = book(entry(["k"], "late", insertion_order=200), entry(["k"], "early", insertion_order=5),
                entry(["k"], "after", position="after_char"),
                entry(["k"], "deep", extensions={"position": 4, "depth": 2}),
                entry(["k"], "note", extensions={"position": 2}))   # Author's Note top: depth 4
    found = scan(lore, "k")
    assert found.before == ("early", "late") and found.after == ("after",)
    assert found.at_depth == ((2, "deep"), (4, "note"))


def test_token_budget_keeps_higher_insertion_order_first():
    lore = Lorebook.parse({"token_budget": 5, "entries": [entry(["k"], "one two three", insertion_order=1),
                                                          entry(["k"], "four five six", insertion_order=9)]})
    assert scan(lore, "k").before == ("four five six",)
    default = book(entry(["k"], "w " * 30))  # no book budget: a quarter of the context
    assert scan(default, "k", context=100).before == () and scan(default, "k", context=200).before


def test_recursive_scanning_follows_entry_text():
    entries = [entry(["ship"], "The ship flies a black flag."), entry(["flag"], "Black flags mean pirates."),
               entry(["pirates"], "Pirates fear storms.", extensions={"exclude_recursion": True})]
    assert scan(book(*entries), "a ship").before == ("The ship flies a black flag.",)
    assert scan(book(*entries, recursive_scanning=True), "a ship").before == (
        "The ship flies a black flag.", "Black flags mean pirates.")


def test_probability():
    assert scan(book(entry(["k"], "x", extensions={"probability": 0, "useProbability": True})), "k").before == ()
    assert scan(book(entry(["k"], "x", extensions={"probability": 0, "useProbability": False})), "k").before == ("x",)


def test_merge_at_depth():
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    merged = merge_at_depth(turns, [(0, "END"), (1, "D1"), (9, "FAR")])
    assert [t["content"] for t in merged] == ["FAR\n\na", "b", "D1\n\nc\n\nEND"]
    assert turns[2]["content"] == "c"  # the caller's turns are not changed


@pytest.mark.parametrize("bad, message", [
    ([1], "character_book must be an object"),
    ({"entries": {"a": 1}}, "'entries' must be a list"),
    ({"entries": ["x"]}, "entry 0 must be an object"),
    ({"entries": [{"keys": "k", "content": 5}]}, "entry 0: 'content' must be str"),
    ({"entries": [{"keys": [1], "content": ""}]}, "'keys' must be a list of texts"),
    ({"entries": [{"keys": [], "content": "", "insertion_order": "high"}]}, "'insertion_order' must be int"),
    ({"entries": [{"keys": [], "content": "", "extensions": {"depth": True}}]}, "'depth' must be int"),
    ({"scan_depth": "deep", "entries": []}, "'scan_depth' must be int"),
])
def test_malformed_books_name_the_fault(bad, message):
    with pytest.raises(LorebookError, match=message):
        Lorebook.parse(bad)


def test_sillytavern_card_book_in_a_real_prompt():
    """The fixture card's book (as SillyTavern exports one) through build_chat_prompt, instruct mode."""
    lore = Lorebook.parse(CARD["data"]["character_book"])
    options = PromptOptions(mode="instruct", name1="Ann", name2="Reyes", context="CONTEXT", lorebook=lore,
                            post_history="[Keep it short.] {{original}}")
    history = [{"role": "user", "content": "Is there a storm?"}, {"role": "assistant", "content": "Maybe."},
               {"role": "user", "content": "We sail from Port Vell."}]
    text = build_chat_prompt(history, options, WordModel(), 50).text
    system = text.split("<|im_end|>")[0]
    # before_char by insertion order (the constant entry 10, then Port Vell 100), the context, then after_char
    assert system == ("<|im_start|>system\nThe Gull carries spice and salt.\n"
                      "Port Vell is a smugglers' harbour under the cliffs.\nCONTEXT")
    assert "kraken" not in text and "no treasure" not in text
    # "storm" is 3 messages back: outside SillyTavern's default scan depth of 2
    assert "storm is building" not in text
    assert "<|im_start|>user\nWe sail from Port Vell.\n\n[Keep it short.]<|im_end|>" in text  # post-history
    history[2]["content"] = "A storm, then kraken."
    text = build_chat_prompt(history, options, WordModel(), 50).text
    assert "CONTEXT\nThe kraken of the Shelf sank three ships last year.<|im_end|>" in text
    # at depth 1: in front of the newest message
    assert "<|im_start|>user\n[A storm is building to the west.]\n\nA storm, then kraken." in text


def test_remote_engines_get_the_lorebook_in_their_messages():
    from modules.chat import engine_messages

    lore = Lorebook.parse(CARD["data"]["character_book"])
    options = PromptOptions(mode="instruct", name1="Ann", name2="Reyes", context="CONTEXT", lorebook=lore,
                            post_history="[Short.]")
    messages = engine_messages([{"role": "user", "content": "Port Vell at last."}], options)
    assert messages[0] == {"role": "system", "content": "The Gull carries spice and salt.\n"
                                                        "Port Vell is a smugglers' harbour under the cliffs.\nCONTEXT"}
    assert messages[-1] == {"role": "user", "content": "Port Vell at last.\n\n[Short.]"}


def test_continue_keeps_the_post_history_and_depth_entries_out_of_the_reply_it_continues():
    # Continue goes on writing the newest reply: its text is what the user reads, so the card's text
    # goes in front of it (SillyTavern puts depth-0 text at depth 1 when continuing), not into it
    book = {"entries": [{"keys": ["storm"], "content": "[STORM]", "extensions": {"position": 4, "depth": 1}}]}
    history = [{"role": "user", "content": "A storm?"}, {"role": "assistant", "content": "Once upon"}]
    for mode in ("chat", "instruct"):
        options = PromptOptions(mode=mode, post_history="[PHI]", lorebook=Lorebook.parse(book), continue_last=True)
        prompt = build_chat_prompt(history, options, WordModel(), 50)
        assert prompt.reply_prefix == "Once upon"
        assert prompt.text.endswith("Once upon")
        assert prompt.text.index("[STORM]") < prompt.text.index("[PHI]") < prompt.text.index("Once upon")
    merged = merge_at_depth([{"role": "assistant", "content": "Hel"}], [(0, "P")], continuing=True)
    assert merged == [{"role": "user", "content": "P"}, {"role": "assistant", "content": "Hel"}]
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
             {"role": "user", "content": "c"}, {"role": "assistant", "content": "part"}]
    merged = merge_at_depth(turns, [(0, "D0"), (1, "D1"), (2, "D2"), (3, "D3")], continuing=True)
    assert [t["content"] for t in merged[:2]] == ["a", "D3\n\nb"] and merged[3] == turns[3]
    assert merged[2]["content"].startswith("D2\n\nc\n\n") and {"D0", "D1"} <= set(merged[2]["content"].split("\n\n"))
