"""Reasoning ("thinking") blocks: which markers a model uses, and splitting its stream on them.

Reasoning models write their thinking before the answer, between markers:

- `<think>` … `</think>` (Qwen3, DeepSeek-R1 and its distills, Magistral, most others). Templates
  that open `<think>` in the generation prompt make the model write only the closing `</think>`:
  the splitter then starts inside the block (`prompt_state` is "inside").
- GPT-OSS's channels: `<|channel|>analysis<|message|>` … `<|end|>`, then
  `<|start|>assistant<|channel|>final<|message|>` before the answer; those structure markers are
  never shown.

Which one a model uses: the per-model setting (`reasoning` in models/config-user.yaml: `off`,
`think`, `gpt-oss`, or `{start, end}` markers of its own), else it is read from the chat template
(GPT-OSS's channel markers), else `<think>` — a model that never writes the marker never opens a
block, so the default costs nothing. See docs/reasoning.md.

`ReasoningSplitter` is fed the reply's text as it streams and hands back (kind, text) pieces. A
marker split across tokens or UTF-8 pieces is held back until it is whole, exactly as the stop
strings' filter holds a partial stop string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from modules.turns import ReasoningPart, TextPart

Kind = Literal["reasoning", "text"]


@dataclass(frozen=True)
class ReasoningFormat:
    name: str
    start: str = ""
    end: str = ""
    #: structure markers removed wherever they appear in the answer (never shown, never stored)
    hidden: tuple[str, ...] = ()
    #: the text after which the answer itself begins, when it is not the end marker (GPT-OSS opens a
    #: final channel after closing the analysis one); a constrained answer starts there
    answer_after: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.start and self.end)

    def markers(self) -> tuple[str, ...]:
        return tuple(m for m in (self.start, self.end, *self.hidden) if m)

    @property
    def answer_start(self) -> str:
        return self.answer_after or self.end


OFF = ReasoningFormat("off")
THINK = ReasoningFormat("think", "<think>", "</think>")
GPT_OSS = ReasoningFormat("gpt-oss", "<|channel|>analysis<|message|>", "<|end|>",
                          hidden=("<|start|>assistant", "<|channel|>final<|message|>"),
                          answer_after="<|channel|>final<|message|>")
NAMED = {f.name: f for f in (OFF, THINK, GPT_OSS)}
MAX_MARKER_CHARS = 64


class ReasoningSettingError(ValueError):
    """A per-model reasoning setting that is not `auto`, a known name, or a {start, end} pair."""


def parse_setting(value: Any) -> ReasoningFormat | None:
    """A per-model setting as a format (None: `auto`, decide from the template)."""
    if value in (None, "", "auto"):
        return None
    if isinstance(value, str):
        if value not in NAMED:
            raise ReasoningSettingError(f"reasoning must be auto, {', '.join(NAMED)}, or start/end markers; "
                                        f"not {value!r}")
        return NAMED[value]
    if isinstance(value, dict) and set(value) <= {"start", "end"}:
        start, end = value.get("start"), value.get("end")
        if not (isinstance(start, str) and isinstance(end, str) and start.strip() and end.strip()):
            raise ReasoningSettingError("reasoning markers need both a start and an end text")
        if len(start) > MAX_MARKER_CHARS or len(end) > MAX_MARKER_CHARS or start == end:
            raise ReasoningSettingError(f"reasoning markers must differ and be at most {MAX_MARKER_CHARS} characters")
        return ReasoningFormat("custom", start, end)
    raise ReasoningSettingError("reasoning must be auto, a format name, or {start: ..., end: ...}")


def detect(template_source: str | None, setting: Any = None) -> ReasoningFormat:
    """The format for a model: its setting if it has one, else what its chat template shows."""
    chosen = parse_setting(setting)
    if chosen is not None:
        return chosen
    if template_source and "<|channel|>" in template_source:
        return GPT_OSS
    return THINK


def prompt_state(fmt: ReasoningFormat, prompt: str) -> Literal["inside", "after", ""]:
    """Where the prompt leaves the reply: inside a block its generation prompt opened (the model writes
    only the end marker), just after one it closed (thinking switched off: the template wrote an empty
    block), or neither."""
    if not fmt.enabled:
        return ""
    tail = prompt.rstrip()
    return "inside" if tail.endswith(fmt.start) else "after" if tail.endswith(fmt.end) else ""


class ReasoningSplitter:
    """Splits streamed reply text into reasoning and answer pieces."""

    def __init__(self, fmt: ReasoningFormat, inside: bool = False, after: bool = False,
                 one_block: bool = False) -> None:
        """`one_block`: only a block the reply opens with is split off; once it closes or the answer has
        begun, markers are the answer's own text (a constrained answer: a JSON string that holds
        "<think>" is still the JSON the grammar made, not the start of another thought)."""
        self.fmt = fmt
        self.one_block = one_block
        self.inside = inside and fmt.enabled
        self._held = ""
        self._strip_next = after  # the answer's leading blank lines after a block are not its words
        self._answered = False  # some answer text has been emitted
        self.blocks = 1 if self.inside else 0  # blocks opened so far
        self.closed = 0  # ... and closed

    def _watched(self) -> tuple[str, ...]:
        if not self.fmt.enabled:
            return self.fmt.hidden
        if self.one_block and not self.inside and (self._answered or self.closed):
            return ()
        if self.inside:
            return (self.fmt.end,)
        # before any answer, a closing marker with no opening is a stray one (a model that closes again
        # the empty block its template wrote when thinking is off): dropped, not shown
        return (self.fmt.start, *self.fmt.hidden, *(() if self._answered else (self.fmt.end,)))

    def feed(self, text: str) -> list[tuple[Kind, str]]:
        out: list[tuple[Kind, str]] = []
        buf = self._held + text
        self._held = ""
        while buf:
            hits = [(i, m) for m in self._watched() if (i := buf.find(m)) >= 0]
            if not hits:
                keep = self._partial_tail(buf)
                self._emit(out, buf[:len(buf) - keep])
                self._held = buf[len(buf) - keep:]
                break
            index, marker = min(hits, key=lambda hit: (hit[0], -len(hit[1])))
            rest = buf[index:]
            if any(len(m) > len(rest) and m.startswith(rest) for m in self._watched()):
                self._emit(out, buf[:index])  # the text may still grow into a longer marker: wait for it
                self._held = rest
                break
            if (self.one_block and not self.inside and marker == self.fmt.start
                    and (self.closed or self._answered or buf[:index].strip())):
                self._emit(out, buf[:index + len(marker)])  # after the answer began: its own text
                buf = buf[index + len(marker):]
                continue
            if not self.inside and marker == self.fmt.end and buf[:index].strip():
                self._emit(out, buf[:index + len(marker)])  # after words it is text, not a stray marker
                buf = buf[index + len(marker):]
                continue
            self._emit(out, buf[:index])
            buf = buf[index + len(marker):]
            if self.inside and marker == self.fmt.end:
                self.inside = False
                self.closed += 1
                self._strip_next = True
            elif not self.inside and marker == self.fmt.start:
                self.inside = True
                self.blocks += 1
            elif marker == self.fmt.end:
                self._strip_next = True
            # a hidden structure marker (or a stray closing one) is simply dropped
        return out

    def flush(self) -> list[tuple[Kind, str]]:
        """The end of the reply: a held partial marker was text after all."""
        out: list[tuple[Kind, str]] = []
        held, self._held = self._held, ""
        self._emit(out, held)
        return out

    @property
    def unclosed(self) -> bool:
        """The reply ended inside a block (cut by max tokens or Stop)."""
        return self.inside

    def _emit(self, out: list[tuple[Kind, str]], text: str) -> None:
        if not self.inside and self._strip_next:
            text = text.lstrip("\n")
            if not text:
                return
            self._strip_next = False
        if text:
            kind: Kind = "reasoning" if self.inside else "text"
            self._answered = self._answered or kind == "text"
            if out and out[-1][0] == kind:
                out[-1] = (kind, out[-1][1] + text)
            else:
                out.append((kind, text))

    def _partial_tail(self, buf: str) -> int:
        keep = 0
        for marker in self._watched():
            for n in range(min(len(marker) - 1, len(buf)), keep, -1):
                if buf.endswith(marker[:n]):
                    keep = n
                    break
        return keep


def split_text(fmt: ReasoningFormat, text: str, inside: bool = False) -> tuple[str, str, bool]:
    """(reasoning, answer, unclosed) of a whole text at once (imports, non-streamed replies)."""
    splitter = ReasoningSplitter(fmt, inside)
    pieces = splitter.feed(text) + splitter.flush()
    reasoning = "".join(t for k, t in pieces if k == "reasoning")
    answer = "".join(t for k, t in pieces if k == "text")
    return reasoning.strip("\n"), answer, splitter.unclosed


class ReplyAssembler:
    """A streamed reply as answer text plus reasoning blocks, each block with its tokens and seconds.

    The pipeline feeds it every piece of shown text (after stop strings) with the tokens it cost;
    `split=False` (raw-text requests) keeps everything as text. An engine that returns reasoning apart
    (`engine_reasoning`, e.g. vLLM's `reasoning_content`) adds to the current block directly. A token
    that is only a marker counts towards its block; a block lasts from its start marker (or first
    words) to its end marker.
    """

    def __init__(self, fmt: ReasoningFormat, state: str = "", split: bool = True, one_block: bool = False) -> None:
        """`state`: where the prompt left the reply (see `prompt_state`); `one_block`: see ReasoningSplitter."""
        self.splitter = ReasoningSplitter(fmt if split else OFF, inside=state == "inside",
                                          after=split and state == "after", one_block=one_block)
        # each segment: [kind, text, tokens, started, ended]
        self._segments: list[list[Any]] = []
        self._pending = {"reasoning": 0, "text": 0}  # tokens that came before their segment's first words
        self._opened_at: float | None = None  # when the block now open began (its start marker)
        self.answer = ""
        self.reasoning = ""
        self._engine_open = False  # the engine's reasoning stream has not given way to text yet

    @property
    def thinking(self) -> bool:
        """Inside a reasoning block right now."""
        return self.splitter.inside or self._engine_open

    def add(self, text: str, tokens: int, now: float, engine_reasoning: str = "") -> tuple[str, str]:
        """Feed shown text; returns (answer delta, reasoning delta)."""
        splitter = self.splitter
        was_inside, opened, closed = splitter.inside, splitter.blocks, splitter.closed
        pieces: list[tuple[Kind, str]] = []
        if engine_reasoning:
            self._engine_open = True
            pieces.append(("reasoning", engine_reasoning))
        elif text and self._engine_open:  # the engine's text after its reasoning ends the block
            self._engine_open = False
            if self._segments_end_with("reasoning"):
                self._segments[-1][4] = now
        if text:
            pieces += splitter.feed(text)
        if splitter.blocks > opened or (engine_reasoning and self._opened_at is None):
            self._opened_at = now
        in_block = was_inside or splitter.inside or splitter.closed > closed or bool(engine_reasoning)
        deltas = self._take(pieces, now)
        if splitter.closed > closed and self._segments_end_with("reasoning"):
            self._segments[-1][4] = now  # the end marker ends the block
        self._count(tokens, "reasoning" if in_block else "text")
        return deltas

    def finish(self, now: float) -> tuple[str, str]:
        self._engine_open = False
        return self._take(self.splitter.flush(), now)

    def _take(self, pieces: list[tuple[Kind, str]], now: float) -> tuple[str, str]:
        answer_delta = reasoning_delta = ""
        for kind, text in pieces:
            if kind == "reasoning" and not self._segments_end_with("reasoning"):
                text = text.lstrip("\n")  # "<think>\n" opens most blocks
                if not text:
                    continue
            if self._segments_end_with(kind):
                self._segments[-1][1] += text
                self._segments[-1][4] = now
            else:
                started = self._opened_at if kind == "reasoning" and self._opened_at is not None else now
                self._segments.append([kind, text, self._pending[kind], started, now])
                self._pending[kind] = 0
            if kind == "text":
                answer_delta += text
            else:
                reasoning_delta += text
        self.answer += answer_delta
        self.reasoning += reasoning_delta
        return answer_delta, reasoning_delta

    def _count(self, tokens: int, kind: str) -> None:
        if not tokens:
            return
        target = self._segments[-1] if self._segments_end_with(kind) else None
        if target is None and kind == "reasoning" and not self.splitter.inside and self._segments:
            target = next((s for s in reversed(self._segments) if s[0] == "reasoning"), None)  # the end marker
        if target is not None:
            target[2] += tokens
        else:
            self._pending[kind] += tokens

    def _segments_end_with(self, kind: str) -> bool:
        return bool(self._segments) and self._segments[-1][0] == kind

    def parts(self) -> tuple:
        """The reply so far as typed parts (modules/turns.py), in order."""
        out: list[Any] = []
        last = len(self._segments) - 1
        for i, (kind, text, tokens, started, ended) in enumerate(self._segments):
            if kind == "reasoning":
                still_open = i == last and self.thinking
                out.append(ReasoningPart(text.rstrip("\n"), tokens=tokens, seconds=round(ended - started, 3),
                                         complete=not still_open))
            else:
                out.append(TextPart(text))
        if not any(isinstance(p, TextPart) for p in out):
            out.append(TextPart(""))
        return tuple(out)
