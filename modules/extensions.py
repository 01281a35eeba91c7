"""Extensions: discovery, loading, and isolated dispatch of the hooks in `modules/hookspecs.py`.

Where extensions come from (a name found in several places: the first wins):
  1. `user_data/extensions/<name>/script.py`   (the user's own)
  2. `extensions/<name>/script.py`             (built-ins shipped with Parlour)
  3. installed packages with an entry point in the group `parlour`  (`pip install parlour-foo`)

Why pluggy, and where we stop using it. pluggy holds the specs, registers plugins, validates that a
marked implementation's arguments exist in its spec, and finds plugins through entry points: the
same jobs it does for simonw/llm and datasette. A text-generation-webui `script.py` has no markers,
so each of its hook functions is wrapped in a marked adapter (rather than overriding
`parse_hookimpl_opts`): text-generation-webui calls hooks *positionally*, so real scripts name their
parameters freely (`def input_modifier(text)`), which pluggy's name check would reject. Dispatch is
ours, over pluggy's own list of implementations (`hook.get_hookimpls()`), because pluggy's caller
cannot do three things this project needs: feed each modifier the previous one's result (chaining
in load order), keep calling the others when one raises (isolation, with a timeout), and pass
defaulted arguments such as `is_chat` (pluggy only passes the parameters without defaults).

A failing hook (exception, wrong return type, or no answer within `timeout` seconds) is logged with
the extension and hook names, recorded for the Session tab, and skipped: the request continues with
the value it had. A hook that hung is not called again (its thread cannot be killed).

text-generation-webui's own module names (`from modules import shared, chat`) reach a folder
extension through `modules/tgw_compat` (see its docstring): each script runs with an import function
scoped to its own code. Something that layer cannot provide, hit at import, in `ui()` or in a hook,
disables the extension with a message naming it.

Turning an extension off and on again keeps its module: the page's controls (built once, by the
module's `ui()`) stay wired to the very module whose hooks run again, and `setup()` runs once per
module, as in text-generation-webui.
"""

from __future__ import annotations

import collections
import html
import importlib.metadata
import importlib.util
import inspect
import logging
import re
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import nh3
import pluggy

from modules import hookspecs
from modules.hookspecs import HOOKS, hookimpl
from modules.paths import UnsafeName, check_name, safe_child
from modules.tgw_compat import MISSING_ERRORS, Compat, Missing

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "parlour"
_LEGACY = "__parlour_legacy__"
_MISSING = object()


class ExtensionError(RuntimeError):
    """An extension that cannot be found or loaded; the message is one line for the user."""


def sanitize_html(text: str) -> str:
    """HTML from an extension, made safe to show (nh3, as model output is).

    TODO(merge): use modules/render.py's sanitizer once it lands, so there is one policy.
    """
    return nh3.clean(text)


@dataclass
class Source:
    """Where an available extension lives."""

    name: str
    kind: str  # "user", "built-in" or "pip"
    path: Path | None = None
    entry_point: importlib.metadata.EntryPoint | None = None


@dataclass
class Loaded:
    """An enabled extension: its plugin object (what pluggy registered) and its module."""

    source: Source
    module: Any
    plugin: Any
    requirements: list[str] = field(default_factory=list)
    dead_hooks: set[str] = field(default_factory=set)  # hooks that hung; never called again

    @property
    def params(self) -> dict[str, Any]:
        params = getattr(self.module, "params", None)
        return params if isinstance(params, dict) else {}

    @property
    def display_name(self) -> str:
        return str(self.params.get("display_name", self.source.name))


def read_requirements(folder: Path) -> list[str]:
    """The requirement lines of an extension's requirements.txt (comments and options left out)."""
    path = folder / "requirements.txt"
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def missing_requirements(requirements: Iterable[str]) -> list[str]:
    """Requirements not satisfied by the installed packages (we report them; we never install)."""
    from packaging.requirements import InvalidRequirement, Requirement

    missing = []
    for line in requirements:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            missing.append(f"{line} (unreadable requirement)")
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(f"{line} (installed: {version})")
    return missing


def _legacy_plugin(module: types.ModuleType) -> types.SimpleNamespace:
    """A pluggy plugin for a text-generation-webui script: one marked adapter per hook function."""
    plugin = types.SimpleNamespace()
    for name in HOOKS:
        func = getattr(module, name, None)
        if callable(func):
            def adapter(*args: Any, **kwargs: Any) -> Any:  # never called by pluggy: see _call
                raise RuntimeError("legacy adapters are dispatched by Extensions")
            setattr(adapter, _LEGACY, func)
            setattr(plugin, name, hookimpl(adapter))
    return plugin


def _has_markers(module: Any) -> bool:
    return any(hasattr(getattr(module, name, None), "parlour_impl") for name in dir(module))


def _call(impl: pluggy.HookImpl, hook: str, positional: list[Any], named: dict[str, Any]) -> Any:
    """Call one implementation the way its style expects.

    `positional` holds the spec's parameters in order; `named` the keyword ones (is_chat, **kwargs).
    text-generation-webui scripts get as many positional arguments as they take (old one-argument
    `input_modifier(string)` keeps working) plus the keywords they accept; pluggy-style
    implementations get their parameters by name.
    """
    legacy = getattr(impl.function, _LEGACY, None)
    if legacy is not None:
        params = inspect.signature(legacy).parameters.values()
        takes_all_kw = any(p.kind is p.VAR_KEYWORD for p in params)
        if any(p.kind is p.VAR_POSITIONAL for p in params):
            count = len(positional)
        else:
            count = sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                        and p.name not in named)
        names = {p.name for p in params}
        kwargs = {k: v for k, v in named.items() if takes_all_kw or k in names}
        return legacy(*positional[:count], **kwargs)
    spec = inspect.signature(getattr(hookspecs, hook)).parameters.values()
    spec_positional = [p.name for p in spec if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in named]
    values = dict(zip(spec_positional, positional))
    values.update(named)
    accepted = set(impl.argnames) | set(impl.kwargnames)
    takes_all_kw = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(impl.function).parameters.values())
    return impl.function(**{k: v for k, v in values.items() if k in accepted or takes_all_kw})


class HookFailed(Exception):
    """Internal: a hook that raised, returned the wrong type, or timed out."""


class Extensions:
    """The extensions of one App: what is available, what is enabled, and calling their hooks."""

    def __init__(self, builtin_dir: Path | None = None, user_dir: Path | None = None,
                 settings_params: dict[str, Any] | None = None, timeout: float = 10.0,
                 entry_points: bool = True) -> None:
        self.builtin_dir = builtin_dir
        self.user_dir = user_dir
        self.settings_params = dict(settings_params or {})
        self.timeout = timeout
        self.use_entry_points = entry_points
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.loaded: dict[str, Loaded] = {}  # in load order
        #: why an extension could not be enabled (name -> one line)
        self.load_errors: dict[str, str] = {}
        #: recent hook failures per extension, newest last (shown in the Session tab)
        self.failures: dict[str, collections.deque[str]] = {}
        #: extensions turned off in this process, kept to be turned on again as the same module (see above)
        self._retired: dict[str, Loaded] = {}
        #: text-generation-webui's modules as this App's extensions see them
        self.compat = Compat()
        #: the names the settings enable at start (`start` enables them once the App exists)
        self.configured: list[str] = []
        self._lock = threading.RLock()

    @classmethod
    def from_settings(cls, settings: Any, builtin_dir: Path, enable: bool = True) -> "Extensions":
        """The extensions the settings name, enabled unless `enable` is False; the App passes False and
        calls `start(app)` once it exists (text-generation-webui scripts read `shared.args` or the
        model as they are imported)."""
        ext = cls(builtin_dir=builtin_dir, user_dir=Path(settings.user_data) / "extensions",
                  settings_params=dict(settings.extension_params), timeout=settings.extension_timeout)
        ext.configured = list(dict.fromkeys([*settings.default_extensions, *settings.extensions]))
        if enable:
            ext.enable(ext.configured)
        return ext

    def start(self, app: Any) -> dict[str, str]:
        """Bind text-generation-webui's modules to `app`, then enable the configured extensions."""
        self.compat.bind(app)
        return self.enable(self.configured)

    # ---- discovery and loading -------------------------------------------------------------

    def available(self) -> dict[str, Source]:
        """Every extension that could be enabled, by name (user folder > built-in > pip)."""
        found: dict[str, Source] = {}
        for kind, root in (("user", self.user_dir), ("built-in", self.builtin_dir)):
            if root is None or not root.is_dir():
                continue
            for path in sorted(root.iterdir()):
                try:
                    name = check_name(path.name)
                except UnsafeName:
                    continue
                if name not in found and (path / "script.py").is_file() and not path.is_symlink():
                    found[name] = Source(name, kind, path=path)
        if self.use_entry_points:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                if ep.name not in found:
                    found[ep.name] = Source(ep.name, "pip", entry_point=ep)
        return found

    def enable(self, names: list[str]) -> dict[str, str]:
        """Make exactly `names` the enabled extensions, in that order; return {name: error} for failures.

        Hooks take effect for the next request. One turned off earlier in this process comes back as the
        same module, so the controls its ui() built stay wired to it; the ui(), CSS and JS of one never
        enabled before need a page rebuild (a restart), since Gradio cannot add components to a running app.
        """
        with self._lock:
            for name in [n for n in self.loaded if n not in names]:
                self._retire(name)
            available = self.available()
            errors: dict[str, str] = {}
            for name in names:
                if name in self.loaded:
                    continue
                try:
                    self._load(name, available)
                    self.load_errors.pop(name, None)
                except ExtensionError as exc:
                    errors[name] = str(exc)
                    self.load_errors[name] = str(exc)
                    log.error("extension %s disabled: %s", name, exc)
            # Load order is the order asked for, whatever order they were loaded in over time.
            self.loaded = {n: self.loaded[n] for n in names if n in self.loaded}
            return errors

    def _retire(self, name: str) -> None:
        loaded = self.loaded.pop(name)
        self.pm.unregister(loaded.plugin)
        self._retired[name] = loaded

    def disable(self, name: str, reason: str) -> None:
        """Turn an enabled extension off because of `reason` (shown in the Session tab and logged)."""
        with self._lock:
            if name in self.loaded:
                self._retire(name)
            self.load_errors[name] = reason
        log.error("extension %s disabled: %s", name, reason)

    def _load(self, name: str, available: dict[str, Source]) -> None:
        try:
            check_name(name)
        except UnsafeName as exc:
            raise ExtensionError(f"invalid extension name: {exc}") from exc
        source = available.get(name)
        if source is None:
            raise ExtensionError(f"no extension named {name!r} (looked in {self.user_dir}, {self.builtin_dir} "
                                 f"and installed packages)")
        retired = self._retired.pop(name, None)
        if retired is not None and retired.source.path == source.path and retired.source.kind == source.kind:
            self.pm.register(retired.plugin, name=name)  # the same module: the page's controls are wired to it
            retired.dead_hooks.clear()
            self.loaded[name] = retired
            return
        requirements: list[str] = []
        if source.path is not None:
            folder = safe_child(source.path.parent, name)
            requirements = read_requirements(folder)
            missing = missing_requirements(requirements)
            if missing:
                raise ExtensionError(f"missing dependencies: {', '.join(missing)} — install them with "
                                     f"`pip install -r {folder / 'requirements.txt'}` and enable it again")
            module = self._import_script(name, folder / "script.py")
        else:
            try:
                module = source.entry_point.load()
            except Exception as exc:
                raise ExtensionError(f"could not import package entry point {source.entry_point.value}: "
                                     f"{exc.__class__.__name__}: {exc}") from exc
        self._apply_settings_params(name, module)
        plugin = module if _has_markers(module) else _legacy_plugin(module)
        try:
            self.pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise ExtensionError(f"invalid hook: {exc}") from exc
        loaded = Loaded(source, module, plugin, requirements)
        self.loaded[name] = loaded
        if self._impl(name, "setup") is not None:
            try:
                self._guarded(loaded, "setup", self._impl(name, "setup"), [], {})
            except HookFailed as exc:
                self.pm.unregister(plugin)
                del self.loaded[name]
                raise ExtensionError(f"setup() failed: {exc}") from exc

    def _import_script(self, name: str, script: Path) -> types.ModuleType:
        """A fresh module object per App, so two Apps never share an extension's params.

        The module is also the package of its folder (`from .helpers import x` and text-generation-webui's
        `from extensions.<name> import helpers` load the folder's files), and it runs with the import
        function of `modules/tgw_compat`, scoped to this extension's code."""
        module_name = f"parlour_extension_{name}"
        spec = importlib.util.spec_from_file_location(module_name, script,
                                                      submodule_search_locations=[str(script.parent)])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        module.__builtins__ = self.compat.builtins_for_extension()  # type: ignore[attr-defined]
        for key in [k for k in sys.modules if k.startswith(module_name + ".")]:
            del sys.modules[key]  # an earlier App's copy of its helper files
        sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
        self.compat.extension_modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:
            self.compat.extension_modules.pop(name, None)
            if not isinstance(exc, Exception):
                raise
            raise ExtensionError(_import_failure(exc)) from exc
        return module

    def _apply_settings_params(self, name: str, module: Any) -> None:
        """settings.yaml `<extension>-<param>: value` overrides, written into the extension's own dict
        (text-generation-webui scripts read their module-level `params` at call time)."""
        params = getattr(module, "params", None)
        if not isinstance(params, dict):
            return
        for key in list(params):
            value = self.settings_params.get(f"{name}-{key}", _MISSING)
            if value is not _MISSING:
                params[key] = value

    def unknown_settings_params(self) -> list[str]:
        """settings.yaml extension keys that match no parameter of an enabled extension."""
        known = {f"{name}-{key}" for name, ext in self.loaded.items() for key in ext.params}
        return sorted(k for k in self.settings_params if k not in known)

    # ---- isolated calls ------------------------------------------------------------------------

    def _impl(self, name: str, hook: str) -> pluggy.HookImpl | None:
        plugin = self.loaded[name].plugin
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin is plugin:
                return impl
        return None

    def _impls(self, hook: str) -> list[tuple[Loaded, pluggy.HookImpl]]:
        """(extension, implementation) for `hook`, in load order, skipping hooks that hung."""
        with self._lock:
            loaded = list(self.loaded.values())
        out = []
        by_plugin = {id(impl.plugin): impl for impl in getattr(self.pm.hook, hook).get_hookimpls()}
        for ext in loaded:
            impl = by_plugin.get(id(ext.plugin))
            if impl is not None and hook not in ext.dead_hooks:
                out.append((ext, impl))
        return out

    def record_failure(self, ext: Loaded, hook: str, message: str) -> None:
        line = f"{hook}: {message}"
        log.error("extension %s, hook %s failed and was skipped: %s", ext.source.name, hook, message)
        self.failures.setdefault(ext.source.name, collections.deque(maxlen=5)).append(line)

    def _guarded(self, ext: Loaded, hook: str, impl: pluggy.HookImpl, positional: list[Any],
                 named: dict[str, Any], check: Callable[[Any], bool] | None = None, expected: str = "") -> Any:
        """Call `impl` in its own thread; raise HookFailed (after recording it) on error, bad type or timeout."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = _call(impl, hook, positional, named)
            except BaseException as exc:  # noqa: BLE001 - anything an extension raises is its failure
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=run, name=f"ext-{ext.source.name}-{hook}", daemon=True).start()
        if not done.wait(self.timeout):
            ext.dead_hooks.add(hook)
            self.record_failure(ext, hook, f"no answer within {self.timeout:g} s; disabled until restart")
            raise HookFailed(f"{ext.source.name}.{hook} timed out")
        if "error" in box:
            exc = box["error"]
            if isinstance(exc, Missing) and hook != "setup":  # a failed setup() is reported by _load
                self.disable(ext.source.name, f"{hook}() needs {exc.what}, which Parlour cannot provide")
            else:
                self.record_failure(ext, hook, f"{exc.__class__.__name__}: {exc}")
            raise HookFailed(f"{exc.__class__.__name__}: {exc}") from exc
        value = box["value"]
        if check is not None and not check(value):
            self.record_failure(ext, hook, f"returned {type(value).__name__}, expected {expected}")
            raise HookFailed(f"{ext.source.name}.{hook} returned the wrong type")
        return value

    def _chain(self, hook: str, value: Any, make_args: Callable[[Any], tuple[list[Any], dict[str, Any]]],
               check: Callable[[Any], bool], expected: str) -> Any:
        """Each extension's result feeds the next; a failing one leaves the value as it was."""
        for ext, impl in self._impls(hook):
            positional, named = make_args(value)
            try:
                value = self._guarded(ext, hook, impl, positional, named, check, expected)
            except HookFailed:
                continue
        return value

    def _first(self, hook: str, positional: list[Any], named: dict[str, Any], check: Callable[[Any], bool],
               expected: str) -> Any:
        """The first extension's non-None answer to a custom_* hook (None: Parlour's own behaviour)."""
        for ext, impl in self._impls(hook):
            try:
                value = self._guarded(ext, hook, impl, positional, named,
                                      lambda v: v is None or check(v), expected + " or None")
            except HookFailed:
                continue
            if value is not None:
                return value
        return None

    # ---- one method per hook: the pipeline and the chat code call these ----------------------

    def has(self, hook: str) -> bool:
        """Whether any enabled extension implements `hook` (so callers can skip work nobody wants)."""
        return bool(self._impls(hook))

    def provides(self, name: str, hook: str) -> bool:
        """Whether the enabled extension `name` implements `hook`."""
        return name in self.loaded and self._impl(name, hook) is not None

    def state(self, state: dict[str, Any]) -> dict[str, Any]:
        return self._chain("state_modifier", state, lambda s: ([s], {}), _is(dict), "dict")

    def chat_input(self, text: str, visible_text: str, state: dict[str, Any]) -> tuple[str, str]:
        pair = self._chain("chat_input_modifier", (text, visible_text), lambda p: ([p[0], p[1], state], {}),
                           _is_str_pair, "(str, str)")
        return pair[0], pair[1]

    def input(self, string: str, state: dict[str, Any], is_chat: bool = False) -> str:
        return self._chain("input_modifier", string, lambda s: ([s, state], {"is_chat": is_chat}), _is(str), "str")

    def history(self, history: dict[str, Any]) -> dict[str, Any]:
        return self._chain("history_modifier", history, lambda h: ([h], {}), _is_history,
                           "dict with 'internal' and 'visible' lists")

    def bot_prefix(self, string: str, state: dict[str, Any]) -> str:
        return self._chain("bot_prefix_modifier", string, lambda s: ([s, state], {}), _is(str), "str")

    def chat_prompt(self, user_input: str, state: dict[str, Any], **kwargs: Any) -> str | None:
        return self._first("custom_generate_chat_prompt", [user_input, state], kwargs, _is(str), "str")

    def tokenized_length(self, prompt: str) -> int | None:
        return self._first("custom_tokenized_length", [prompt], {},
                           lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "int >= 0")

    def tokenizer(self, state: dict[str, Any], prompt: str, input_ids: Any, input_embeds: Any) -> tuple[str, Any, Any]:
        return self._chain("tokenizer_modifier", (prompt, input_ids, input_embeds),
                           lambda t: ([state, *t], {}),
                           lambda v: isinstance(v, (tuple, list)) and len(v) == 3 and isinstance(v[0], str),
                           "(prompt, input_ids, input_embeds)")

    def logits_processors(self, processor_list: list[Any], input_ids: Any) -> list[Any]:
        """Extensions add processors to the list (in place or by returning one); each added processor
        is wrapped so that one raising mid-generation is skipped instead of ending the reply."""
        for ext, impl in self._impls("logits_processor_modifier"):
            before = list(processor_list)
            try:
                result = self._guarded(ext, "logits_processor_modifier", impl, [processor_list, input_ids], {},
                                       lambda v: v is None or isinstance(v, list), "None or list")
            except HookFailed:
                processor_list[:] = before
                continue
            if result is not None and result is not processor_list:
                processor_list[:] = result
            processor_list[:] = [p if any(p is b for b in before) else _GuardedProcessor(self, ext, p)
                                 for p in processor_list]
        return processor_list

    def generate_reply(self, question: str, original_question: str, seed: int, state: dict[str, Any],
                       stopping_strings: list[str], is_chat: bool = False) -> Iterator[str] | None:
        """The first extension's replacement for the model, as an isolated iterator (None: use the model)."""
        for ext, impl in self._impls("custom_generate_reply"):
            try:
                value = self._guarded(ext, "custom_generate_reply", impl,
                                      [question, original_question, seed, state, stopping_strings],
                                      {"is_chat": is_chat}, lambda v: v is None or hasattr(v, "__iter__"),
                                      "an iterator of str or None")
            except HookFailed:
                continue
            if value is not None:
                return self._isolated_iter(ext, iter(value))
        return None

    def _isolated_iter(self, ext: Loaded, items: Iterator[Any]) -> Iterator[str]:
        """Run a custom reply generator in its own thread; stop (recorded) on error, bad item or timeout."""
        import queue

        out: queue.Queue = queue.Queue()
        stop = threading.Event()
        end = object()

        def produce() -> None:
            try:
                for item in items:
                    out.put(("item", item))
                    if stop.is_set():
                        break
            except BaseException as exc:  # noqa: BLE001
                out.put(("error", exc))
            finally:
                out.put(("end", end))

        threading.Thread(target=produce, name=f"ext-{ext.source.name}-reply", daemon=True).start()
        try:
            while True:
                try:
                    kind, item = out.get(timeout=self.timeout)
                except queue.Empty:
                    ext.dead_hooks.add("custom_generate_reply")
                    self.record_failure(ext, "custom_generate_reply", f"no text within {self.timeout:g} s")
                    return
                if kind == "end":
                    return
                if kind == "error":
                    self.record_failure(ext, "custom_generate_reply", f"{item.__class__.__name__}: {item}")
                    return
                if not isinstance(item, str):
                    self.record_failure(ext, "custom_generate_reply", f"yielded {type(item).__name__}, expected str")
                    return
                yield item
        finally:
            stop.set()

    def output(self, string: str, state: dict[str, Any], is_chat: bool = False) -> str:
        return self._chain("output_modifier", string, lambda s: ([s, state], {"is_chat": is_chat}), _is(str), "str")

    def reply_footer(self, stats: dict[str, Any], state: dict[str, Any]) -> str:
        """Every extension's footer line, joined and sanitized (it is shown as HTML)."""
        lines = []
        for ext, impl in self._impls("reply_footer"):
            try:
                lines.append(self._guarded(ext, "reply_footer", impl, [dict(stats), state], {}, _is(str), "str"))
            except HookFailed:
                continue
        return sanitize_html("\n".join(line for line in lines if line))

    def css(self) -> str:
        """Every extension's custom_css(), joined."""
        return "\n".join(code for _name, code in self._collect("custom_css"))

    def js(self) -> list[tuple[str, str]]:
        """(extension, code) for every extension's custom_js()."""
        return self._collect("custom_js")

    def _collect(self, hook: str) -> list[tuple[str, str]]:
        parts = []
        for ext, impl in self._impls(hook):
            try:
                parts.append((ext.source.name, self._guarded(ext, hook, impl, [], {}, _is(str), "str")))
            except HookFailed:
                continue
        return parts

    def render_ui(self, name: str) -> bool:
        """Call one extension's ui() inside the current Gradio context (not in a thread: Gradio's
        context is per thread). A failure is recorded and leaves whatever it built so far."""
        ext = self.loaded[name]
        impl = self._impl(name, "ui")
        if impl is None:
            return False
        try:
            _call(impl, "ui", [], {})
        except MISSING_ERRORS as exc:
            self.disable(name, f"its controls (ui) need {exc.what}, which Parlour's page does not have")
        except Exception as exc:  # noqa: BLE001
            self.record_failure(ext, "ui", f"{exc.__class__.__name__}: {exc}")
        return True

    # ---- status for the Session tab ------------------------------------------------------------

    def status_markdown(self) -> str:
        """One line per known extension: enabled or not, where from, and what went wrong."""
        rows = ["| extension | source | state |", "|---|---|---|"]
        available = self.available()
        for name in sorted(set(available) | set(self.load_errors) | set(self.loaded)):
            source = available.get(name) or (self.loaded[name].source if name in self.loaded else None)
            kind = source.kind if source else "not found"
            if name in self.loaded:
                problems = list(self.failures.get(name, ()))
                dead = self.loaded[name].dead_hooks
                state = ("⚠️ failed: " + "; ".join(problems[-3:])) if problems else "✅ enabled"
                if dead:
                    state += f" (stopped calling: {', '.join(sorted(dead))})"
            elif name in self.load_errors:
                state = "❌ disabled: " + self.load_errors[name]
            else:
                state = "off"
            rows.append(f"| {html.escape(name)} | {kind} | {html.escape(state).replace('|', '/')} |")
        for key in self.unknown_settings_params():
            rows.append(f"| {html.escape(key)} | settings.yaml | ⚠️ no enabled extension has this parameter |")
        return "\n".join(rows)


_CANNOT_IMPORT = re.compile(r"cannot import name '([^']+)' from '([^']+)'")


def _import_failure(exc: Exception) -> str:
    """One line saying why a script could not be imported."""
    if isinstance(exc, Missing):
        return f"import failed: it needs {exc.what}, which Parlour's text-generation-webui compatibility " \
               "layer does not provide"
    if isinstance(exc, ImportError):
        found = _CANNOT_IMPORT.search(str(exc))
        if found and found.group(2).split(".")[0] == "modules":
            return f"import failed: it needs {found.group(2)}.{found.group(1)}, which Parlour's " \
                   "text-generation-webui compatibility layer does not provide"
        if (exc.name or "").split(".")[0] == "modules":
            return f"import failed: it imports {exc.name}, which is neither a text-generation-webui module " \
                   "Parlour provides nor one of Parlour's own"
        return f"import failed: {exc} — install what it needs, or list it in the extension's requirements.txt"
    return f"import failed: {exc.__class__.__name__}: {exc}"


def _is(kind: type) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, kind)


def _is_str_pair(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, str) for v in value)


def _is_history(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("internal"), list) and isinstance(value.get("visible"), list)


class _GuardedProcessor:
    """A logits processor from an extension: if it raises, the scores pass through unchanged."""

    def __init__(self, extensions: Extensions, ext: Loaded, inner: Any) -> None:
        self.extensions, self.ext, self.inner = extensions, ext, inner
        self.failed = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.failed:
            return scores
        try:
            out = self.inner(input_ids, scores)
        except Exception as exc:  # noqa: BLE001
            self.failed = True
            self.extensions.record_failure(self.ext, "logits_processor_modifier",
                                           f"processor {type(self.inner).__name__} raised {exc.__class__.__name__}: {exc}")
            return scores
        if getattr(out, "shape", None) != getattr(scores, "shape", None):
            self.failed = True
            self.extensions.record_failure(self.ext, "logits_processor_modifier",
                                           f"processor {type(self.inner).__name__} returned the wrong shape")
            return scores
        return out


# ---- chat history in text-generation-webui's shape -------------------------------------------

def messages_to_history(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """[{role, content}] -> {'internal': [[user, bot], ...], 'visible': same} (system messages left out)."""
    pairs: list[list[str]] = []
    for message in messages:
        if message["role"] == "user":
            pairs.append([message["content"], ""])
        elif message["role"] == "assistant":
            if pairs and pairs[-1][1] == "":
                pairs[-1][1] = message["content"]
            else:
                pairs.append(["", message["content"]])
    return {"internal": [list(p) for p in pairs], "visible": [list(p) for p in pairs]}


def history_to_messages(history: dict[str, Any], system: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The inverse of messages_to_history, with the system messages put back in front."""
    messages = list(system)
    for pair in history["internal"]:
        user, bot = (list(pair) + ["", ""])[:2]
        if user:
            messages.append({"role": "user", "content": str(user)})
        if bot:
            messages.append({"role": "assistant", "content": str(bot)})
    return messages


_PARAM_KEY = re.compile(r"^[^\s-][^\s]*?-.+$")


def is_extension_param_key(key: str) -> bool:
    """settings.yaml keys shaped like `<extension>-<param>` (text-generation-webui's convention)."""
    return isinstance(key, str) and bool(_PARAM_KEY.match(key))
