"""Request bodies of the OpenAI-compatible routes.

Every `Preset` field is also a request field, derived from `Preset.model_fields` (same type, range
and description, default "not given"), so a sampler added to `Preset` is accepted by the API with no
change here. Fields no model here knows are accepted and reported back (header
`X-Parlour-Ignored-Fields`), so clients written for text-generation-webui or OpenAI keep working
and still learn what was ignored.
"""

from __future__ import annotations

from copy import copy
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from modules.paths import UnsafeName, check_name
from modules.presets import MAX_CONSTRAINT_CHARS, Preset

MAX_CHOICES = 8  # `n`: each choice is a full generation, so keep it small
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1000


def _optional_copy(name: str) -> tuple[Any, Any]:
    """A Preset field as an optional request field: same constraints, default None (= not given)."""
    info = copy(Preset.model_fields[name])
    info.default = None
    return Optional[info.annotation], info


#: OpenAI's penalties, used as request fields only while Preset does not define them itself.
_OPENAI_ONLY = {
    "presence_penalty": (Optional[float], Field(None, ge=-2.0, le=2.0, description="OpenAI presence penalty")),
    "frequency_penalty": (Optional[float], Field(None, ge=-2.0, le=2.0, description="OpenAI frequency penalty")),
}

PresetFields = create_model(
    "PresetFields", __config__=ConfigDict(extra="allow"),
    **{**_OPENAI_ONLY, **{name: _optional_copy(name) for name in Preset.model_fields}})
PresetFields.__doc__ = "Every Preset field, optional. Generated from Preset: do not list samplers by hand."

_max_tokens = _optional_copy("max_new_tokens")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class GenerationFields(PresetFields):  # type: ignore[misc, valid-type]
    """What /v1/completions and /v1/chat/completions share."""

    model: str | None = Field(None, description="the loaded model's name (others: 404)")
    max_tokens: _max_tokens[0] = _max_tokens[1]  # type: ignore[valid-type]
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, description="stop strings (not included in the reply)")
    stopping_strings: list[str] | None = Field(None, description="text-generation-webui's name for more stop strings")
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="number of choices to generate")
    response_format: dict[str, Any] | None = None
    # constrained output under other engines' names (see modules/api/constraints.py)
    grammar: str | None = Field(None, description="a GBNF grammar the reply must follow (llama.cpp server's name "
                                "for grammar_string)", max_length=MAX_CONSTRAINT_CHARS)
    guided_json: dict[str, Any] | str | None = Field(None, description="vLLM: a JSON schema the reply must match")
    guided_regex: str | None = Field(None, description="vLLM: a regex the reply must match",
                                     max_length=MAX_CONSTRAINT_CHARS)
    guided_grammar: str | None = Field(None, description="vLLM: a grammar the reply must follow",
                                       max_length=MAX_CONSTRAINT_CHARS)
    guided_choice: list[str] | None = Field(None, description="vLLM: the reply is one of these strings")
    structured_outputs: dict[str, Any] | None = Field(None, description="vLLM: json, regex, grammar, choice or "
                                                      "json_object")
    tools: list[Any] | None = None
    user: str | None = None
    preset: str | None = Field(None, description="name of a preset in presets/ to start from")
    truncate_prompt: bool = Field(False, description="drop the oldest part of a prompt longer than the context "
                                                     "instead of answering 400 (reported in the response)")

    @field_validator("stop", "stopping_strings")
    @classmethod
    def _bounded_stops(cls, value: Any) -> Any:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop string is longer than {MAX_STOP_CHARS} characters")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(stops + list(self.stopping_strings or []))

    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


class CompletionRequest(GenerationFields):
    prompt: str | list[str] | list[int] = Field(..., description="text, several texts, or token ids")
    echo: bool = False
    suffix: str | None = None
    #: log-probabilities of each token, with this many top alternatives (0: the chosen token only)
    logprobs: int | None = Field(None, ge=0, le=20)

    def prompts(self) -> list[str] | list[list[int]]:
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]  # type: ignore[list-item]
        return list(self.prompt)  # type: ignore[arg-type]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        for part in value if isinstance(value, list) else []:
            if part.type != "text":
                raise ValueError(f"only text parts are supported, not {part.type!r}")
        return value

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text or "" for part in self.content)


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: _max_tokens[0] = _max_tokens[1]  # type: ignore[valid-type]
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    #: continue the last (assistant) message instead of starting a new one
    continue_final_message: bool = False
    # text-generation-webui's chat fields; see modules/api/chat_options.py for how they are applied
    mode: Literal["instruct", "chat", "chat-instruct"] | None = None
    character: str | None = None
    instruction_template: str | None = None
    instruction_template_str: str | None = None
    chat_template_str: str | None = None
    name1: str | None = None
    name2: str | None = None
    context: str | None = None
    greeting: str | None = None
    user_bio: str | None = None
    chat_instruct_command: str | None = None
    continue_: bool = False
    # reasoning models: template switches (Qwen3's enable_thinking, GPT-OSS's reasoning_effort, which is
    # also OpenAI's own field) and whether earlier replies' reasoning is sent back (off: the HF convention)
    enable_thinking: bool | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    keep_reasoning: bool = False

    def template_vars(self) -> dict[str, Any]:
        """The chat template's switches this request sets (only those given)."""
        return {k: v for k, v in (("enable_thinking", self.enable_thinking),
                                  ("reasoning_effort", self.reasoning_effort)) if v is not None}

    @field_validator("character", "instruction_template")
    @classmethod
    def _file_names(cls, value: str | None) -> str | None:
        """These name files in characters/ and instruction-templates/: a name that could leave its folder
        (`../x`, an absolute path, NUL, a look-alike slash) is a 400 naming the field before anything is read."""
        if value is None:
            return value
        try:
            return check_name(value)
        except UnsafeName as exc:
            raise ValueError(str(exc)) from exc

