"""text-generation-webui's chat fields on /v1/chat/completions — the one place they are applied.

Every chat request is one chat turn built the way the Chat tab builds a reply (`modules.chat.request_for`,
for whichever model holds the queue slot). A plain OpenAI request (no such field, or only `context`) is
instruct mode with the model's own chat template, as any OpenAI server renders it; `context` is the
system prompt unless a system message is given. A request that names a `mode`, `character`,
instruction template, names, `user_bio` or `chat_instruct_command` gets its PromptOptions from
`modules.chat.resolve_options` (chat / chat-instruct formatting, the character's context, its stop
strings). The messages are the history; system messages become the system prompt (instruct) or lead
the context (chat), as in the Chat tab.

`chat_template_str` (a Jinja template for chat mode's formatting, which Parlour does not template) and
`greeting` (shown in the UI, not sent to the model) are reported back as ignored (header
`X-Parlour-Ignored-Fields`), never silently dropped.
"""

from __future__ import annotations

from typing import Any

from modules.api.errors import APIError
from modules.api.schemas import ChatCompletionRequest
from modules.characters import CharacterError
from modules.chat import PromptOptions, resolve_options
from modules.templates import TemplateError

#: fields that make the request a Chat-tab-style build (`context` alone does not)
CHAT_FIELDS = ("mode", "character", "instruction_template", "instruction_template_str", "name1", "name2",
               "user_bio", "chat_instruct_command")
NOT_APPLIED = ("chat_template_str", "greeting")


def ignored_chat_fields(options: ChatCompletionRequest) -> list[str]:
    return [name for name in NOT_APPLIED if getattr(options, name) is not None]


def prompt_options(app: Any, options: ChatCompletionRequest, user: str, continue_last: bool) -> PromptOptions:
    """PromptOptions for the request: instruct mode with the model's template for a plain OpenAI request
    (nothing of the user's stored profile), the Chat tab's for one with the chat fields. Unknown
    characters or templates are 404s naming the field; bad values are 400s."""
    keep = bool(options.keep_reasoning)
    if all(getattr(options, name) is None for name in CHAT_FIELDS):
        return PromptOptions(mode="instruct", context=options.context or "", continue_last=continue_last,
                             keep_reasoning=keep)
    try:
        return resolve_options(app, user, mode=options.mode or "instruct", character=options.character,
                               instruction_template=options.instruction_template,
                               template_source=options.instruction_template_str, name1=options.name1,
                               name2=options.name2, context=options.context, user_bio=options.user_bio,
                               chat_instruct_command=options.chat_instruct_command, continue_last=continue_last,
                               keep_reasoning=keep)
    except CharacterError as exc:
        status = 404 if "not found" in str(exc) or "does not exist" in str(exc) else 400
        raise APIError(status, str(exc), param="character", code="character_not_found" if status == 404
                       else "invalid_value") from exc
    except TemplateError as exc:
        param = "instruction_template_str" if options.instruction_template_str else "instruction_template"
        status = 404 if "not found" in str(exc) else 400
        raise APIError(status, str(exc), param=param, code="template_not_found" if status == 404
                       else "invalid_value") from exc
