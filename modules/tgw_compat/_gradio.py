"""`import gradio` for text-generation-webui extensions: Gradio 6, with the Gradio 3/4 idioms they use.

text-generation-webui builds its page with Gradio 4; some of its extensions still carry Gradio 3 code.
Gradio 6 raises TypeError on each of these, so an extension's whole `ui()` would fail on one argument:

* `gr.Textbox.update(...)` and the other class-level `update` methods (Gradio 3) -> `gr.update(...)`
* `source="microphone"` (Gradio 3) -> `sources=["microphone"]`; `show_copy_button=True` -> `buttons=["copy"]`
* `gr.Box` / `gr.Variable` (Gradio 3) -> `gr.Group` / `gr.State`
* events: `_js=` (Gradio 3) -> `js=`; `show_api=` (Gradio 4) -> `api_visibility=`
* a Dataset's `evt.value` on select is the whole sample row the script built (Gradio 6 sends one value
  per component; the gallery reads a second column)
* any other keyword the Gradio 6 component or event does not take (`gr.Chatbot(type=...)`,
  `bubble_full_width`, an event's `every=`) is dropped, with one warning naming it.

Events an extension defines get `api_visibility="private"` unless they name an API endpoint
themselves: the page's own calls work as usual, but the extension's handlers are not offered as
public API endpoints (Parlour's own UI events are private the same way).

What comes back is always a real Gradio 6 object; the shim classes only translate arguments
(`isinstance(x, gr.Textbox)` still holds). Everything else is Gradio itself.
"""

from __future__ import annotations

import functools
import inspect
import logging
import types
from typing import Any

log = logging.getLogger("parlour.tgw_compat")

#: Gradio 3 names that Gradio 6 no longer has
RENAMED = {"Box": "Group", "Variable": "State"}
#: top-level apps, not components: passed through untouched
NOT_SHIMMED = frozenset({"Blocks", "Interface", "ChatInterface", "TabbedInterface"})


def _accepts(func: Any) -> tuple[set[str], bool]:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    return {p.name for p in params}, any(p.kind is p.VAR_KEYWORD for p in params)


def _translate_component(real: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    names, takes_any = _accepts(real.__init__)
    out = dict(kwargs)
    if "source" in out and "source" not in names and "sources" in names:
        source = out.pop("source")
        out["sources"] = [source] if isinstance(source, str) else source
    if "show_copy_button" in out and "show_copy_button" not in names:
        if out.pop("show_copy_button") and "buttons" in names:
            out["buttons"] = ["copy"]
    if not takes_any:
        dropped = sorted(k for k in out if k not in names)
        for key in dropped:
            del out[key]
        if dropped:
            log.warning("extension ui: gr.%s(%s) is not a Gradio 6 argument; ignored", real.__name__,
                        ", ".join(f"{k}=..." for k in dropped))
    return out


def _translate_event(trigger: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    if "_js" in out:
        out.setdefault("js", out.pop("_js"))
    if "show_api" in out:
        out.setdefault("api_visibility", "public" if out.pop("show_api") else "private")
    if "api_name" not in out and "api_visibility" not in out:
        out["api_visibility"] = "private"
    names, takes_any = _accepts(trigger)
    if not takes_any:
        dropped = sorted(k for k in out if k not in names)
        for key in dropped:
            del out[key]
        if dropped:
            log.warning("extension ui: event argument %s is not a Gradio 6 argument; ignored", ", ".join(dropped))
    return out


def _wrap_trigger(trigger: Any) -> Any:
    @functools.wraps(trigger)
    def call(*args: Any, **kwargs: Any) -> Any:
        return _wrap_dependency(trigger(*args, **_translate_event(trigger, kwargs)))

    return call


def _wrap_dependency(dependency: Any) -> Any:
    """`.then(...)` / `.success(...)` / `.failure(...)` chained on an event take the same arguments."""
    for name in ("then", "success", "failure"):
        follow = getattr(dependency, name, None)
        if callable(follow):
            try:
                setattr(dependency, name, _wrap_trigger(follow))
            except (AttributeError, TypeError):
                pass
    return dependency


def _wrap_events(block: Any) -> Any:
    for event in getattr(block, "EVENTS", ()) or ():
        name = event if isinstance(event, str) else getattr(event, "event_name", None)
        trigger = getattr(block, name, None) if name else None
        if callable(trigger):
            setattr(block, name, _wrap_trigger(trigger))
    return block


class _Rows:
    """Full sample rows of the Datasets an extension builds, found again from what a select event carries.

    A text-generation-webui script may give a Dataset rows longer than its components (the gallery's
    `[html, character name]` for one HTML component) and read the extra column from `evt.value` on
    select; Gradio 6 keeps and sends only one value per component. Rows seen here (bounded) map what
    arrives back to the row the script built."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.by_head: dict[str, list[Any]] = {}

    def remember(self, samples: Any, width: int) -> None:
        for row in samples or ():
            if isinstance(row, (list, tuple)) and len(row) > width and len(self.by_head) < self.limit:
                self.by_head[repr(list(row[:width]))] = list(row)

    def full(self, value: Any) -> Any:
        return self.by_head.get(repr(value), value) if isinstance(value, list) else value


def _wrap_dataset(dataset: Any, rows: _Rows) -> Any:
    import gradio

    rows.remember(getattr(dataset, "raw_samples", None), len(getattr(dataset, "_components", []) or [1]))
    for name in ("select", "click"):
        trigger = getattr(dataset, name, None)
        if not callable(trigger):
            continue

        def listen(fn: Any = None, *args: Any, _trigger: Any = trigger, **kwargs: Any) -> Any:
            if callable(fn):
                original = fn

                @functools.wraps(original)
                def fn(*values: Any, **named: Any) -> Any:  # noqa: ANN202 - Gradio reads the wrapped signature
                    for value in [*values, *named.values()]:
                        if isinstance(value, gradio.SelectData):
                            value.value = rows.full(value.value)
                    return original(*values, **named)
            return _trigger(fn, *args, **kwargs)

        setattr(dataset, name, listen)
    return dataset


class _ShimType(type):
    """The type of a shim class: calling it builds the real Gradio class with translated arguments."""

    _real: type
    _rows: _Rows

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        block = _wrap_events(cls._real(*args, **_translate_component(cls._real, kwargs)))
        if cls._real.__name__ == "Dataset":
            block = _wrap_dataset(block, cls._rows)
        return block

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, cls._real)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, cls._real)

    def __getattr__(cls, name: str) -> Any:
        return getattr(cls._real, name)


def _shim(real: type, rows: _Rows) -> type:
    def update(**kwargs: Any) -> Any:  # Gradio 3's Component.update(...)
        import gradio

        return gradio.update(**kwargs)

    return _ShimType(real.__name__, (), {"_real": real, "_rows": rows, "update": staticmethod(update),
                                         "__doc__": real.__doc__})


def make_shim() -> types.ModuleType:
    """A module that reads as `gradio` for extension code."""
    import gradio
    from gradio.blocks import Block

    module = types.ModuleType("gradio", gradio.__doc__)
    module.__file__ = gradio.__file__
    module.__path__ = list(getattr(gradio, "__path__", []))  # `import gradio.x` still finds submodules
    shims: dict[str, Any] = {}
    rows = _Rows()

    def __getattr__(name: str) -> Any:
        if name in shims:
            return shims[name]
        real = getattr(gradio, RENAMED.get(name, name))
        if isinstance(real, type) and issubclass(real, Block) and name not in NOT_SHIMMED:
            shims[name] = _shim(real, rows)
            return shims[name]
        return real

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]
    module.__version__ = gradio.__version__  # type: ignore[attr-defined]
    return module
