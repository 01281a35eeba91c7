"""`modules.text_generation` for text-generation-webui extensions: tokenizing and generating with the App's model.

`generate_reply(question, state, ...)` runs Parlour's pipeline on the raw prompt `question` (the queue,
the other extensions' hooks and the stop strings included) and yields the growing reply, as
text-generation-webui's does. Call it from a `ui()` event handler, not from inside a hook: the request
that runs the hook holds the model, so a nested request would wait for it (in text-generation-webui too).

(One copy of this module per App; see the package docstring.)
"""

from typing import Any, Iterator

from modules.tgw_compat import missing_attributes

_compat: Any = globals()["_compat"]  # put here by Compat.module() before this file runs (one per App)
shared = _compat.module("shared")


def _require_tokenizer() -> Any:
    tokenizer = shared.tokenizer
    if tokenizer is None:
        raise ValueError("No tokenizer is loaded")
    return tokenizer


def encode(prompt: str, add_special_tokens: bool = True, add_bos_token: bool = True,
           truncation_length: int | None = None) -> Any:
    """Token ids of `prompt` as a 1 x n tensor (a BOS token in front when the tokenizer has one)."""
    import torch

    tokenizer = _require_tokenizer()
    if callable(tokenizer):  # a Hugging Face tokenizer (shared's view over other backends only encodes)
        ids = list(tokenizer(str(prompt), add_special_tokens=add_special_tokens)["input_ids"])
    else:
        ids = list(tokenizer.encode(str(prompt)))
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        if add_bos_token and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        while len(ids) > 1 and ids[0] == bos and ids[1] == bos:
            ids.pop(0)
    if truncation_length is not None:
        ids = ids[-truncation_length:]
    return torch.tensor([ids], dtype=torch.long)


def decode(output_ids: Any, skip_special_tokens: bool = True) -> str:
    tokenizer = _require_tokenizer()
    if hasattr(output_ids, "tolist"):
        output_ids = output_ids.tolist()
    if isinstance(output_ids, int):
        output_ids = [output_ids]
    return tokenizer.decode(output_ids, skip_special_tokens=skip_special_tokens)


def get_encoded_length(prompt: str) -> int:
    counted = _compat.app.extensions.tokenized_length(prompt) if _compat.app is not None else None
    return counted if counted is not None else len(encode(prompt)[0])


def get_token_ids(prompt: str) -> str:
    tokens = encode(prompt)[0].tolist()
    return "".join(f"{str(t).ljust(5)}  -  {decode([t], skip_special_tokens=False)!r}\n" for t in tokens)


def get_max_prompt_length(state: dict[str, Any]) -> int:
    return int(state["truncation_length"]) - int(state["max_new_tokens"])


def _preset(state: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from modules.presets import Preset

    app = _compat.app
    base = app.start_preset() if app is not None else Preset()
    values = {**base.model_dump(), **{k: v for k, v in (state or {}).items() if k in Preset.model_fields}}
    try:
        return Preset.model_validate(values)
    except ValidationError:
        return base


def generate_reply(question: str, state: dict[str, Any], stopping_strings: list[str] | None = None,
                   is_chat: bool = False, escape_html: bool = False, for_ui: bool = False) -> Iterator[str]:
    """Yield the growing reply to the raw prompt `question` (sampling values from `state`)."""
    import html

    from modules.generation import GenerationRequest, NoModel

    app = _compat.app
    if app is None:
        raise NoModel("no model is loaded")
    request = GenerationRequest(preset=_preset(state), prompt=question, stop=tuple(stopping_strings or ()),
                                user=str((state or {}).get("user", "local")))
    for update in app.pipeline.stream(request):
        if update.queue_position:
            continue
        yield html.escape(update.text) if escape_html else update.text


def stop_everything_event() -> None:
    """text-generation-webui's global stop flag. Parlour stops each request by its own Stop button."""
    shared.stop_everything = True


__getattr__ = missing_attributes("modules.text_generation")
