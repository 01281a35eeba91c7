"""Chat prompts: modes chat / instruct / chat-instruct, instruction templates, truncation, stop strings.

`build_chat_prompt` is the ONE place a chat prompt is made (UI, API, extensions all come here). It
runs in clear steps so hooks can be inserted between them:

    1. substitute {{char}} / {{user}} in the character's context
    2. (history_modifier)            the turns to send
       the character card's lorebook entries (modules/lorebook.py)
    3. format the turns for the mode (chat text, instruction template, or both)
    4. truncate: drop the oldest turns until prompt + reply fit the context; report what was dropped;
       the kept turns get the card's Character's Note at its depth and its post-history instructions
       after the chat (modules/character_note.py), so neither is ever cut
    5. (bot_prefix_modifier)         start the reply: the bot's name, "start reply with", a partial
                                     reply to continue, or the user's name when impersonating
    6. stop strings: derived from the template (end of turn, start of the next one) plus custom ones

Everything it needs comes in `PromptOptions` plus a `TokenCounter`; no UI, no globals, so the API
can call it with text-generation-webui's fields (mode, character, instruction_template, name1,
name2, context).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol, Sequence

import yaml

from modules import character_note, limits, lorebook
from modules.character_note import CharacterNote
from modules.extensions import messages_to_history
from modules.fileio import FileTooLarge, load_yaml, read_text_limited, unusable_files
from modules.loaders import registry
from modules.paths import UnsafeName, safe_child
from modules.presets import Preset
from modules.templates import ChatTemplate, TemplateError
from modules.tools import prompt as tool_prompt
from modules.turns import Turn, turns_from_messages

Mode = Literal["chat", "instruct", "chat-instruct"]
MODES: tuple[str, ...] = ("chat", "instruct", "chat-instruct")
DEFAULT_COMMAND = ('Continue the chat dialogue below. Write a single reply for the character "<|character|>".'
                   "\n\n<|prompt|>")
MAX_TEMPLATE_BYTES = 256 * 1024
#: a remote engine's context, for a lorebook's default budget when only the engine knows the real one
ESTIMATED_CONTEXT = 8192
_MARK = "\ue000PARLOUR-MARK\ue000"  # a private-use sentinel no template rewrites


class ContextOverflow(ValueError):
    """Even the newest turn alone does not fit the context."""


@dataclass(frozen=True)
class PromptOptions:
    """Everything besides the turns that shapes a chat prompt (text-generation-webui's field names)."""

    mode: Mode = "chat"
    name1: str = "You"  # the user's name
    name2: str = "Assistant"  # the character's name
    context: str = ""  # the character's context (persona, scenario, examples)
    user_bio: str = ""  # the user's description, appended to the context
    #: Jinja source of the instruction template; None means the model's own chat template
    instruction_template: str | None = None
    template_name: str = ""  # for metadata: which template was used
    system_message: str = ""  # instruct mode's system message (default: the character's context)
    chat_instruct_command: str = DEFAULT_COMMAND
    custom_stops: tuple[str, ...] = ()
    start_reply_with: str = ""
    continue_last: bool = False  # the last turn is a partial assistant reply to extend
    impersonate: bool = False  # write the user's next message instead of the reply
    #: send earlier replies' reasoning back to the model (off by default: the Hugging Face convention)
    keep_reasoning: bool = False
    character: str = ""  # the character's file name (characters/<character>.yaml), "" for none
    lorebook: Any = None  # the character card's lorebook (modules/lorebook.Lorebook), None for none
    post_history: str = ""  # the card's post-history instructions: after the chat, before the reply
    character_note: CharacterNote | None = None  # the card's Character's Note (extensions.depth_prompt)


@dataclass
class ChatPrompt:
    text: str
    stops: tuple[str, ...]
    prompt_tokens: int
    context_length: int
    turns_dropped: int = 0
    #: text the reply starts with that the model does not generate (start reply with / continue)
    reply_prefix: str = ""
    #: prompt tokens the dropped turns held (0 when nothing was dropped)
    tokens_dropped: int = 0


class TokenCounter(Protocol):
    """What prompt building needs from a model: token counts, the context size, its own template."""

    chat_template: ChatTemplate | None
    loader: str  # its capabilities are the registry's (modules/loaders/registry.py)
    reasoning_format: Any  # modules/reasoning.ReasoningFormat: read only to keep thinking inline

    @property
    def context_length(self) -> int: ...

    def tokenize(self, text: str) -> list[int]: ...


def substitute(text: str, name1: str, name2: str) -> str:
    """Character-card placeholders: {{char}} / <BOT> for the character, {{user}} / <USER> for the user."""
    for key in ("{{char}}", "{{Char}}", "<BOT>"):
        text = text.replace(key, name2)
    for key in ("{{user}}", "{{User}}", "<USER>"):
        text = text.replace(key, name1)
    return text


def _template(backend: TokenCounter, options: PromptOptions) -> ChatTemplate:
    if options.instruction_template:
        custom = options.template_name in ("custom", "")
        return ChatTemplate(options.instruction_template, name="the custom instruction template" if custom
                            else f"instruction template {options.template_name!r}")
    if backend.chat_template is None:
        if registry.capabilities(backend).engine_templates:
            raise TemplateError("the remote engine applies its own template, so this turn (continue, impersonate, "
                                "start reply with) cannot be written as text here: choose an instruction template")
        raise TemplateError("the model has no chat template: choose an instruction template")
    return backend.chat_template


def _render(template: ChatTemplate, messages: list[dict[str, str]], extra: dict[str, Any],
            open_role: str | None = "assistant") -> str:
    """Render `messages`, then open a turn of `open_role` (None: leave the last turn closed)."""
    if open_role is None:
        return template.render(messages, add_generation_prompt=False, **extra)
    if open_role == "assistant":
        return template.render(messages, add_generation_prompt=True, **extra)
    # Opening a user turn: render it with a marker as content and cut at the marker.
    text = template.render(messages + [{"role": open_role, "content": _MARK}], add_generation_prompt=False, **extra)
    if _MARK not in text:
        raise TemplateError(f"the instruction template cannot start a {open_role} turn")
    return text.split(_MARK)[0]


def template_stops(template: ChatTemplate, extra: dict[str, Any] | None = None) -> tuple[str, ...]:
    """Stop strings a template implies: what closes an assistant turn and what opens the next user turn."""
    extra = extra or {}
    a, u = _MARK + "A", _MARK + "U"
    stops: list[str] = []
    try:
        two = template.render([{"role": "user", "content": "x"}, {"role": "assistant", "content": a}],
                              add_generation_prompt=False, **extra)
        three = template.render([{"role": "user", "content": "x"}, {"role": "assistant", "content": a},
                                 {"role": "user", "content": u}], add_generation_prompt=False, **extra)
    except TemplateError:
        return ()
    end = two.split(a, 1)[1].strip() if a in two else ""
    if end:
        stops.append(end)
    if a in three and u in three:
        between = three.split(a, 1)[1].split(u, 1)[0].strip()
        if between and between != end:
            stops.append(between[len(end):].strip() if between.startswith(end) and len(between) > len(end) else between)
    return tuple(s for s in stops if s and _MARK not in s)


def _chat_lines(turns: list[dict[str, str]], options: PromptOptions) -> str:
    """Chat mode's transcript: one `Name: text` block per turn."""
    out = []
    for turn in turns:
        if turn["role"] == "system":  # a Character's Note of role system: a narrator's line, no speaker
            out.append(f"{turn['content']}\n")
            continue
        name = options.name1 if turn["role"] == "user" else options.name2
        out.append(f"{name}: {turn['content']}\n")
    return "".join(out)


def _context(options: PromptOptions) -> str:
    context = substitute(options.context, options.name1, options.name2).strip()
    bio = substitute(options.user_bio, options.name1, options.name2).strip()
    return "\n\n".join(part for part in (context, bio) if part)


def _format(turns: list[dict[str, str]], options: PromptOptions, backend: TokenCounter,
            extra: dict[str, Any], open_turn: bool = True) -> str:
    """Step 3: the prompt for these turns, up to where the model starts writing (before any prefix).
    `open_turn=False`: without what opens the reply's turn (to find that opening, see `_opening`)."""
    context = _context(options)
    if options.continue_last and turns and turns[-1]["role"] == "assistant":
        turns, partial = turns[:-1], turns[-1]["content"]
    else:
        partial = None
    speaker = options.name1 if options.impersonate else options.name2
    if options.mode == "chat":
        head = (context + "\n\n" if context else "") + _chat_lines(turns, options)
        return head + (f"{speaker}:" + (" " + partial if partial is not None else "") if open_turn else "")
    template = _template(backend, options)
    role = ("user" if options.impersonate else "assistant") if open_turn else None
    if options.mode == "instruct":
        system = substitute(options.system_message or context, options.name1, options.name2).strip()
        messages = ([{"role": "system", "content": system}] if system else []) + list(turns)
        text = _render(template, messages, extra, role)
        return text + (partial or "")
    # chat-instruct: the whole chat transcript becomes one instruction, the reply is the next line
    text = _render(template, _chat_instruct_messages(turns, options, speaker), extra, role)
    return text + (partial or "")


def _opening(turns: list[dict[str, str]], options: PromptOptions, backend: TokenCounter,
             extra: dict[str, Any]) -> str:
    """What opens the reply's turn at the end of the prompt: the template's generation prompt (e.g.
    `<|im_start|>assistant\n`), or `Name:` in chat mode. It does not depend on which turns are kept."""
    full = _format(turns, options, backend, extra)
    closed = _format(turns, options, backend, extra, open_turn=False)
    return full[len(closed):] if full.startswith(closed) else ""


def _chat_instruct_messages(turns: list[dict[str, str]], options: PromptOptions,
                            speaker: str) -> list[dict[str, str]]:
    """chat-instruct's messages: the optional system message, then one instruction holding the transcript."""
    context = _context(options)
    transcript = (context + "\n\n" if context else "") + _chat_lines(turns, options)
    command = options.chat_instruct_command.replace("<|character|>", speaker).replace("<|prompt|>", transcript)
    messages = ([{"role": "system", "content": options.system_message}] if options.system_message else [])
    return messages + [{"role": "user", "content": command}]


def engine_messages(history: History, options: PromptOptions) -> list[dict[str, str]] | None:
    """The next turn as chat messages, for an engine that applies the model's own template (remote).

    None when only a prompt TEXT is faithful: continue, impersonate and "start reply with" put words
    in the reply's (or the user's) mouth, and a chosen instruction template must be rendered here.
    Same system-turn handling as `build_chat_prompt`; no truncation (the engine knows its context).
    """
    if options.continue_last or options.impersonate or options.start_reply_with:
        return None
    if options.instruction_template is not None and options.mode != "chat":  # chat mode uses no template
        return None
    turns = tool_prompt.openai_messages([m for t in history if _turn(t).role in ("user", "assistant", "tool")
                                         for m in _turn(t).template_messages()])
    history = [{"role": _turn(t).role, "content": _turn(t).text} for t in history]
    system_turns = "\n\n".join(t["content"] for t in history if t["role"] == "system" and t["content"].strip())
    if options.lorebook is not None:  # as in build_chat_prompt; the engine's tokenizer is not here: estimated
        if options.mode == "instruct" and system_turns and not options.system_message:
            options = replace(options, system_message=system_turns)
        options, turns = lorebook.apply(options, turns, lambda text: len(text) // 4 + 1, ESTIMATED_CONTEXT)
    # the note as a message of its role: the engine's own template renders it (as SillyTavern sends it)
    turns = character_note.place(options, turns)
    if options.mode == "chat":
        # the character's context is the system message; each turn carries its speaker's name
        context = "\n\n".join(part for part in (system_turns, _context(options)) if part)
        named = [{**t, "name": options.name1 if t["role"] == "user" else options.name2}
                 if t["role"] in ("user", "assistant") else t for t in turns]
        return ([{"role": "system", "content": context}] if context else []) + named
    if options.mode == "chat-instruct":
        opts = replace(options, system_message=options.system_message or system_turns)
        return _chat_instruct_messages(tool_prompt.plain_messages(turns), opts, options.name2)
    system = substitute(options.system_message or system_turns or _context(options), options.name1,
                        options.name2).strip()
    return ([{"role": "system", "content": system}] if system else []) + turns


History = Sequence["Turn | dict[str, Any]"]


def _turn(item: "Turn | dict[str, Any]") -> Turn:
    return item if isinstance(item, Turn) else turns_from_messages([item])[0]


def template_messages(history: History, options: PromptOptions, backend: Any,
                      tools_template: ChatTemplate | None = None) -> list[dict[str, Any]]:
    """The history as {"role", "content"} messages for prompt building. An earlier reply's reasoning
    goes with it only when the user keeps it: as `reasoning_content` for templates that read it, else
    inline between the model's own markers (chat mode's transcript, templates that ignore the key).
    Tool calls and results are `tool_calls` and `tool` messages for a template that renders them
    (`tools_template`, see tool_template), else text (modules/tools/prompt.py)."""
    template = options.instruction_template or (backend.chat_template.source if backend.chat_template else "")
    reads_key = options.mode != "chat" and "reasoning_content" in (template or "")
    out = []
    for item in history:
        turn = _turn(item)
        messages = turn.template_messages(options.keep_reasoning and reads_key)
        if options.keep_reasoning and not reads_key and turn.reasoning and backend.reasoning_format.enabled:
            fmt = backend.reasoning_format
            messages[0]["content"] = f"{fmt.start}{turn.reasoning}{fmt.end}\n\n{messages[0]['content']}"
        out.extend(messages)
    return tool_prompt.for_template(out, tools_template)


def tool_template(backend: Any, options: PromptOptions) -> ChatTemplate | None:
    """The template, when it renders tools and tool messages itself (instruct mode, a tool-aware template);
    None when the generic tool prompt stands in (modules/tools/prompt.py)."""
    if options.mode != "instruct":
        return None
    template = _template(backend, options)
    return template if tool_prompt.tool_aware(template) else None


def _with_tool_prompt(options: PromptOptions, text: str) -> PromptOptions:
    """The generic tool prompt joins the system message (chat mode: the character's context)."""
    if options.mode == "chat":
        return replace(options, context="\n\n".join(p for p in (options.context.strip(), text) if p))
    base = options.system_message or (_context(options) if options.mode == "instruct" else "")
    return replace(options, system_message="\n\n".join(p for p in (base.strip(), text) if p))


def options_state(options: PromptOptions, history: History) -> dict[str, Any]:
    """What extensions' `state` says about a chat turn, under text-generation-webui's key names."""
    plain = [{"role": _turn(t).role, "content": _turn(t).text} for t in history if _turn(t).role in ("user", "assistant")]
    pairs = messages_to_history(plain)
    return {"mode": options.mode, "name1": options.name1, "name2": options.name2, "context": options.context,
            "user_bio": options.user_bio, "character_menu": options.character,
            "custom_system_message": options.system_message, "chat-instruct_command": options.chat_instruct_command,
            "start_with": options.start_reply_with, "_continue": options.continue_last,
            "impersonate": options.impersonate, "instruction_template_str": options.instruction_template or "",
            "history": pairs}


def _card_turns(kept: list[dict[str, Any]], options: PromptOptions, backend: TokenCounter,
                extra: dict[str, Any]) -> list[dict[str, Any]]:
    """Step 4b: the kept turns with the card's Character's Note and post-history instructions put in
    (modules/character_note.py). In instruct mode the note is a message of its own only where the
    template shows one there: a template that refuses it (a system message inside the chat, two user
    messages in a row) or leaves it out gets the note merged into the message at its depth instead."""
    note = options.character_note
    if not note and not options.post_history.strip():
        return kept
    if note and options.mode == "instruct":
        probe = replace(options, character_note=CharacterNote(_MARK, note.depth, note.role), post_history="")
        try:
            shown = _MARK in _format(character_note.place(probe, kept), options, backend, extra)
        except TemplateError:
            shown = False
        if not shown:
            return character_note.place(options, kept, separate=False)
    return character_note.place(options, kept)


def _cut_points(turns: list[dict[str, str]]) -> list[int]:
    """Where the kept history may start after dropping: at a user turn, so pairs are dropped whole."""
    return [i for i, t in enumerate(turns) if t["role"] == "user" and i > 0]


def build_chat_prompt(history: History, options: PromptOptions, backend: TokenCounter,
                      max_new_tokens: int, extra: dict[str, Any] | None = None, hooks: Any = None) -> ChatPrompt:
    """The prompt for the next reply to `history` ({"role", "content"} turns, oldest first).

    Oldest turns are dropped (whole user/reply pairs; the character context and system message are
    always kept) until the prompt leaves room for the reply: `max_new_tokens`, but at most half the
    context, so a large max_new_tokens cannot wipe out the whole history.
    """
    extra = extra or {}
    if options.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {options.mode!r}")
    # steps 1-2: the turns as given (extensions' history_modifier goes here). System turns (the API's
    # "system" messages) are not turns: they become the system message, or lead the context in chat mode.
    chat_turns = [_turn(t) for t in history if _turn(t).role in ("user", "assistant", "tool")]
    if hooks is not None and hooks.history is not None:
        chat_turns = hooks.history(chat_turns)
    tools_template = tool_template(backend, options)
    aware = tools_template is not None
    turns = template_messages(chat_turns, options, backend, tools_template)
    tools = extra.get("tools")
    if tools and not aware:  # the template cannot show tools: the generic prompt does (modules/tools/prompt.py)
        extra = {k: v for k, v in extra.items() if k != "tools"}
    history = [{"role": _turn(t).role, "content": _turn(t).text} for t in history]
    system_turns = "\n\n".join(t["content"] for t in history if t["role"] == "system" and t["content"].strip())
    if system_turns and options.mode == "chat":
        options = replace(options, context=system_turns + ("\n\n" + options.context if options.context else ""))
    elif system_turns and not options.system_message:
        options = replace(options, system_message=system_turns)
    if tools and not aware:
        options = _with_tool_prompt(options, tool_prompt.generic_prompt(tools))
    context_length = backend.context_length
    if options.lorebook is not None:  # step 2b: the card's lorebook entries
        options, turns = lorebook.apply(options, turns, lambda text: len(backend.tokenize(text)), context_length)
    budget = context_length - min(max_new_tokens, context_length // 2)

    # step 5 (used in prompt_for): extensions' bot_prefix_modifier gets what opens the reply's turn
    # (plus "start reply with") once, and may add hidden text there (character_bias); the visible
    # reply prefix stays options.start_reply_with
    opening, new_opening = "", options.start_reply_with
    if hooks is not None and hooks.bot_prefix is not None and not (options.continue_last or options.impersonate):
        opening = _opening(turns, options, backend, extra)
        new_opening = hooks.bot_prefix(opening + options.start_reply_with)

    def prompt_for(start: int) -> tuple[str, int]:
        text = _format(_card_turns(turns[start:], options, backend, extra), options, backend, extra)
        if opening and text.endswith(opening):
            text = text[:len(text) - len(opening)]
        text += new_opening
        return text, len(backend.tokenize(text))

    # step 4: binary search for the fewest dropped turns that fit (token count only shrinks as we drop)
    starts = [0] + _cut_points(turns)
    text, count = prompt_for(0)
    full_count = count
    chosen = 0
    if count > budget:
        lo, hi = 1, len(starts) - 1
        best = None
        while lo <= hi:
            mid = (lo + hi) // 2
            t, c = prompt_for(starts[mid])
            if c <= budget:
                best, hi = (mid, t, c), mid - 1
            else:
                lo = mid + 1
        if best is None:
            last = starts[-1]
            text, count = prompt_for(last)
            if count >= context_length:
                raise ContextOverflow(f"the prompt is {count} tokens even with only the newest turn; the model's "
                                      f"context is {context_length}. Shorten the message or the character context.")
            chosen = last  # does not leave the full reply budget, but still fits the context
        else:
            chosen, text, count = starts[best[0]], best[1], best[2]
    # step 5: the reply prefix (bot_prefix_modifier goes here) was appended in prompt_for
    prefix = options.start_reply_with
    if options.continue_last and turns and turns[-1]["role"] == "assistant":
        prefix = turns[-1]["content"] + prefix
    # step 6: stop strings
    stops: list[str] = []
    if options.mode in ("chat", "chat-instruct"):
        stops += [f"\n{options.name1}:", f"\n{options.name2}:"]
    if options.mode in ("instruct", "chat-instruct"):
        stops += template_stops(_template(backend, options), extra)
    stops += [s for s in options.custom_stops if s]
    return ChatPrompt(text=text, stops=tuple(dict.fromkeys(stops)), prompt_tokens=count,
                      context_length=context_length, turns_dropped=chosen, reply_prefix=prefix,
                      tokens_dropped=full_count - count if chosen else 0)


# -- instruction templates on disk ----------------------------------------------------------------
class TemplateLibrary:
    """`instruction-templates/<name>.yaml` files with an `instruction_template` key (text-generation-webui's format)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.yaml") if not p.name.startswith("."))

    def problems(self) -> dict[str, str]:
        """{name: why} for every template file that cannot be used; the others load as usual."""
        return unusable_files(self.names(), self.load, TemplateError)

    def load(self, name: str) -> str:
        """The Jinja source of a template; TemplateError with the file name if it cannot be used."""
        try:
            path = safe_child(self.root, name, ".yaml")
            data = load_yaml(read_text_limited(path, MAX_TEMPLATE_BYTES))
        except UnsafeName as exc:
            raise TemplateError(f"instruction template: {exc}") from exc
        except FileNotFoundError as exc:
            raise TemplateError(f"instruction template {name!r} not found in {self.root}") from exc
        except (FileTooLarge, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise TemplateError(f"instruction template {name!r}: {exc}") from exc
        source = data.get("instruction_template") if isinstance(data, dict) else None
        if not isinstance(source, str) or not source.strip():
            raise TemplateError(f"instruction template {name!r} has no 'instruction_template' text")
        # compile now: a broken file is reported when chosen, not at the first reply
        ChatTemplate(source, name=f"instruction template {name!r}")
        return source


# -- generating and saving a reply -----------------------------------------------------------------
def resolve_seed(preset: Preset) -> Preset:
    """A preset with a concrete seed, so the reply's metadata can reproduce it exactly."""
    if preset.seed >= 0:
        return preset
    return preset.model_copy(update={"seed": random.randrange(2**31)})


def request_for(history: History, options: PromptOptions, preset: Preset,
                cancel: threading.Event | None = None, user: str = "local", stop: tuple[str, ...] = (),
                template_vars: dict[str, Any] | None = None, apply_input_hooks: bool = True,
                model: str | None = None):
    """The pipeline request for the next reply to `history`: its prompt is built (modules/chat.py's
    modes, the character, truncation) for whichever model holds the queue slot, when it does.
    `stop`: the caller's own stop strings (the API's `stop`), on top of the template's and the preset's.
    `apply_input_hooks=False` when the last user message already went through them (regenerate).
    `model`: the model to answer with (None: the default one)."""
    from modules.generation import GenerationRequest

    return GenerationRequest(preset=preset, history=[_turn(t) for t in history], options=options, stop=stop,
                             template_vars=dict(template_vars or {}), cancel=cancel or threading.Event(),
                             user=user, apply_input_hooks=apply_input_hooks, model=model)


@dataclass(frozen=True)
class NextPrompt:
    """The text the model would get for the next reply, and what the UI says about it."""

    text: str
    prompt_tokens: int
    context_length: int
    turns_dropped: int
    stops: tuple[str, ...]


def next_prompt(app: Any, history: History, options: PromptOptions, preset: Preset,
                user: str = "local", template_vars: dict[str, Any] | None = None,
                model: str | None = None) -> NextPrompt:
    """The exact prompt the pipeline would send for a reply to `history` now ("Show prompt", "Send to notebook").

    It goes through the pipeline's own preparation (state_modifier, history_modifier,
    bot_prefix_modifier, truncation), so what the user inspects is what the model would read.
    A remote engine that applies its own template gets messages, not text: there is no exact text
    to show, so that is an error rather than an approximation.
    """
    from modules.generation import NoModel

    backend = app.models.get(model)
    if backend is None:
        raise NoModel(f"{model} is not loaded (it loads with the next message)" if model else "no model is loaded")
    prepared = app.pipeline.prepare(backend, request_for(history, options, preset, user=user,
                                                         template_vars=template_vars, model=model))
    if prepared.messages is not None:
        raise ValueError(f"{backend.name} applies its own chat template to the messages: choose an instruction "
                         "template to get a prompt text Parlour can show")
    return NextPrompt(text=prepared.prompt, prompt_tokens=len(backend.tokenize(prepared.prompt)),
                      context_length=prepared.context_length or backend.context_length,
                      turns_dropped=prepared.turns_dropped, stops=prepared.stops)


def context_line(update: Any) -> str:
    """What the UI says about the context: tokens used of how many, and turns dropped if any."""
    if not update.context_length:
        return ""
    line = f"context {update.prompt_tokens}/{update.context_length} tokens"
    if update.turns_dropped:
        line += f" · ✂️ {update.turns_dropped} oldest messages dropped to fit"
    return line



# -- the chat service: options from names, replies streamed into the store ----------------------------
MODEL_TEMPLATE = "(model's own)"


def resolve_options(app: Any, user: str, mode: str = "chat", character: str | None = None,
                    instruction_template: str | None = None, template_source: str | None = None,
                    name1: str | None = None, name2: str | None = None, context: str | None = None,
                    user_bio: str | None = None, system_message: str = "", chat_instruct_command: str | None = None,
                    custom_stops: tuple[str, ...] = (), **flags: Any) -> PromptOptions:
    """PromptOptions from names, the way the UI and the API (text-generation-webui's fields) give them.

    `character` loads characters/<name>.yaml; `instruction_template` names a file in
    instruction-templates/ (None or MODEL_TEMPLATE: the model's own); `template_source` (edited Jinja)
    beats both. Explicit name1/name2/context/user_bio override the character and the user's profile.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    limits.check_stops(custom_stops, "custom stop strings")
    for field, value in (("system message", system_message), ("chat-instruct command", chat_instruct_command),
                         ("context", context), ("about you", user_bio), ("name", name1), ("name", name2),
                         ("template", template_source), ("start reply with", flags.get("start_reply_with"))):
        limits.check_text(field, value)
    char = app.characters.load(character) if character else None
    profile = app.store.profile(user)
    source: str | None = None
    template_name = "model"
    if template_source and template_source.strip():
        source, template_name = template_source, "custom"
    elif instruction_template and instruction_template != MODEL_TEMPLATE:
        source, template_name = app.templates.load(instruction_template), instruction_template
    return PromptOptions(
        mode=mode,  # type: ignore[arg-type]
        character=character or "", name1=name1 or profile["name"], name2=name2 or (char.name if char else "Assistant"),
        context=context if context is not None else (char.context if char else ""),
        user_bio=user_bio if user_bio is not None else profile["description"],
        lorebook=char.lorebook() if char else None, post_history=char.post_history_instructions if char else "",
        character_note=char.character_note() if char else None,
        instruction_template=source, template_name=template_name, system_message=system_message,
        chat_instruct_command=chat_instruct_command or DEFAULT_COMMAND, custom_stops=tuple(custom_stops), **flags)
