"""Reasoning blocks: markers found however the stream splits them, and the reply's typed parts."""

from __future__ import annotations

import pytest

from modules import reasoning
from modules.reasoning import GPT_OSS, THINK, ReasoningSplitter, ReplyAssembler, detect, parse_setting, split_text
from modules.turns import ReasoningPart, TextPart, Turn, parts_from_json, parts_to_json

QWEN = "<think>\nThe user greets me.\n</think>\n\nHello! How can I help?"
HARMONY = ("<|channel|>analysis<|message|>They want a greeting.<|end|><|start|>assistant"
           "<|channel|>final<|message|>Hi there!")


def feed_in_pieces(fmt, text: str, size: int, inside: bool = False) -> tuple[str, str, bool]:
    splitter = ReasoningSplitter(fmt, inside)
    pieces = []
    for i in range(0, len(text), size):
        pieces += splitter.feed(text[i:i + size])
    pieces += splitter.flush()
    return ("".join(t for k, t in pieces if k == "reasoning"), "".join(t for k, t in pieces if k == "text"),
            splitter.unclosed)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 1000])
def test_think_markers_split_anywhere(size):
    thought, answer, unclosed = feed_in_pieces(THINK, QWEN, size)
    assert thought.strip() == "The user greets me." and answer == "Hello! How can I help?" and not unclosed


@pytest.mark.parametrize("size", [1, 4, 9, 1000])
def test_gpt_oss_channels(size):
    thought, answer, _ = feed_in_pieces(GPT_OSS, HARMONY, size)
    assert thought == "They want a greeting." and answer == "Hi there!"


def test_a_template_that_opens_the_block_leaves_only_the_end_to_the_model():
    prompt = "<|im_start|>assistant\n<think>\n"
    assert reasoning.prompt_state(THINK, prompt) == "inside"
    assert split_text(THINK, "Just think.\n</think>\n\nAnswer.", inside=True) == ("Just think.", "Answer.", False)
    assert reasoning.prompt_state(THINK, "<|im_start|>assistant\n") == ""
    assert reasoning.prompt_state(THINK, "<|im_start|>assistant\n<think>\n\n</think>\n\n") == "after"


def test_an_unclosed_block_is_reasoning_marked_unfinished():
    assert split_text(THINK, "<think>still going") == ("still going", "", True)


def test_text_that_only_looks_like_a_marker_is_kept():
    assert split_text(THINK, "a < b and <thin ice") == ("", "a < b and <thin ice", False)
    assert split_text(THINK, "ends with <thi") == ("", "ends with <thi", False)  # a held partial, flushed


def test_several_blocks_between_words():
    assembler = ReplyAssembler(THINK)
    for piece in ["<think>a</think>x", " <think>b</th", "ink>y"]:
        assembler.add(piece, 1, 0.0)
    assembler.finish(0.0)
    kinds = [(type(p).__name__, p.text) for p in assembler.parts()]
    assert kinds == [("ReasoningPart", "a"), ("TextPart", "x "), ("ReasoningPart", "b"), ("TextPart", "y")]


def test_the_assembler_counts_each_blocks_tokens_and_seconds():
    assembler = ReplyAssembler(THINK)
    assembler.add("<think>", 1, 10.0)
    assembler.add("plan", 1, 10.5)
    assembler.add("</think>", 1, 11.0)
    assembler.add("Done.", 1, 11.2)
    part = assembler.parts()[0]
    assert isinstance(part, ReasoningPart) and part.text == "plan" and part.complete
    assert part.tokens == 3 and part.seconds == pytest.approx(1.0)  # start marker to end marker
    assert assembler.answer == "Done." and not assembler.thinking


def test_an_engines_reasoning_stream_comes_before_the_text():
    assembler = ReplyAssembler(THINK)
    assert assembler.add("", 1, 0.0, engine_reasoning="thinking hard") == ("", "thinking hard")
    assert assembler.thinking
    assert assembler.add("Answer", 1, 1.0) == ("Answer", "")
    assert not assembler.thinking and assembler.parts()[0] == ReasoningPart("thinking hard", 1, 1.0, True)


def test_raw_text_requests_are_never_split():
    assembler = ReplyAssembler(THINK, split=False)
    assembler.add(QWEN, 5, 0.0)
    assert assembler.answer == QWEN and assembler.reasoning == ""


def test_detection_and_per_model_settings():
    assert detect(None) == THINK
    assert detect("{{ '<|channel|>final<|message|>' }}") == GPT_OSS
    assert detect("<think>", "off").enabled is False
    custom = parse_setting({"start": "[THINK]", "end": "[/THINK]"})
    assert (custom.start, custom.end) == ("[THINK]", "[/THINK]")
    assert split_text(custom, "[THINK]hm[/THINK]ok") == ("hm", "ok", False)
    for bad in ("maybe", {"start": "x"}, {"start": "a", "end": "a"}, {"start": "a" * 100, "end": "b"}, 3):
        with pytest.raises(reasoning.ReasoningSettingError):
            parse_setting(bad)


def test_parts_round_trip_and_unknown_parts_are_kept():
    parts = (ReasoningPart("r", tokens=2, seconds=0.1, complete=False), TextPart("t"))
    data = parts_to_json(parts) + [{"type": "image", "url": "data:x"}]
    back = parts_from_json(data)
    assert back[:2] == parts and back[2].type == "image" and parts_to_json(back)[2] == data[2]
    with pytest.raises(ValueError):
        parts_from_json([{"type": "text", "text": 3}])
    turn = Turn("assistant", parts)
    assert turn.text == "t" and turn.reasoning == "r"
    assert turn.template_message() == {"role": "assistant", "content": "t"}
    assert turn.template_message(keep_reasoning=True)["reasoning_content"] == "r"
    assert turn.with_text("new").parts == (parts[0], TextPart("new"))


def test_an_answer_after_an_empty_block_in_the_prompt_loses_its_leading_newlines():
    prompt = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert reasoning.prompt_state(THINK, prompt) == "after"
    assembler = ReplyAssembler(THINK, reasoning.prompt_state(THINK, prompt))
    assembler.add("\nHello", 1, 0.0)
    assert assembler.answer == "Hello"


def test_a_stray_closing_marker_before_the_answer_is_dropped():
    assert split_text(THINK, "</think>\n\nParis.") == ("", "Paris.", False)
    assert split_text(THINK, "Paris. Then </think> here.") == ("", "Paris. Then </think> here.", False)


@pytest.mark.parametrize("size", [1, 3, 8, 1000])
@pytest.mark.parametrize("inside", [True, False])
def test_a_constrained_answer_keeps_markers_inside_it_as_its_own_text(size, inside):
    # under a grammar only the thought the reply opens with is split off: a JSON string that holds the
    # markers is still the grammar's JSON (split as usual, the answer broke off at "<think>")
    opening = "" if inside else "<think>"
    reply = opening + 'Plan it.</think>\n\n{"note": "<think>hm</think>", "n": 1}'
    splitter = ReasoningSplitter(THINK, inside, one_block=True)
    pieces = []
    for i in range(0, len(reply), size):
        pieces += splitter.feed(reply[i:i + size])
    pieces += splitter.flush()
    answer = "".join(t for k, t in pieces if k == "text")
    assert "".join(t for k, t in pieces if k == "reasoning") == "Plan it."
    assert answer == '{"note": "<think>hm</think>", "n": 1}'
    # an answer that begins at once has no thought to split: a marker later on is text too
    assert split_text(THINK, 'x <think>y', inside=False) == ("y", "x ", True)  # without one_block: split
    late = ReasoningSplitter(THINK, one_block=True)
    assert late.feed('{"a": "<think>y"}') + late.flush() == [("text", '{"a": "<think>y"}')]
