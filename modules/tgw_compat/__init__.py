"""text-generation-webui's module names, for its extensions: the compatibility surface, fenced in here.

A text-generation-webui `script.py` imports that program's internals: `from modules import chat, shared`,
`from modules.text_generation import encode`, `import modules.shared as shared`. Parlour's own package
is also called `modules` and has a `chat`, a `ui`, an `extensions` and a `models` of its own, with other
contents. So the names cannot simply be added to Parlour's modules (every Parlour import would see
text-generation-webui's globals, and `modules.chat` cannot be both), nor registered in `sys.modules`
(there is one `modules.chat` per process).

How the two meet, without either seeing the other:

* A folder extension's `script.py` (and every module it imports from its own folder) runs with its own
  `__builtins__`, whose `__import__` is `Compat.importer`. Python looks `__import__` up in the
  importing frame's builtins, so the redirection holds only for code written in that extension: the
  libraries it imports, and all of Parlour, import as usual.
* In that code `modules` is a stand-in package. `modules.<name>` is text-generation-webui's module
  wherever text-generation-webui has a module of that name: one of this package's surface modules
  (`PROVIDED`), or, for the ones Parlour cannot offer (`ui_chat`, `web_search`, ...), an ImportError
  that names it, which disables the extension with that message. Names text-generation-webui does not
  have (`modules.hookspecs`, `modules.render`) are Parlour's own.
* `import gradio` gives the shim in `_gradio.py`: Gradio 6 with the few Gradio 3/4 idioms these
  scripts still use translated (see there). `extensions.<name>` (how text-generation-webui scripts
  import their own helper files) is the extension's folder.
* Each surface module (`shared.py`, `chat.py`, ...) is executed fresh for every `Compat`, that is
  for every App's extensions, with the global `_compat` set to that Compat. Two Apps in one process
  (the tests build many) each get their own `shared`, bound to their own App by `bind(app)`.

This package is the one sanctioned exception to Parlour's "no module-level mutable state": the
surface modules ARE module-level state (text-generation-webui's `shared.gradio`, `shared.settings`,
`shared.processing_message`, attributes extensions assign), because that is the API its extensions
were written against. Nothing outside this package reads it; Parlour's code passes its App explicitly.

What cannot be provided is named, never guessed: an attribute or a `shared.gradio[...]` component
Parlour lacks raises `MissingAttribute` / `MissingComponent` (an AttributeError / KeyError that
says what is missing); `modules.extensions.Extensions` turns one escaping from an extension into
"disabled: needs <that name>". docs/extensions.md lists what each surface module offers.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import sys
import threading
import types
from pathlib import Path
from typing import Any, Callable

SURFACE_DIR = Path(__file__).resolve().parent
#: text-generation-webui modules this package provides (one file each, named the same)
PROVIDED = ("logging_colors", "shared", "text_generation", "html_generator", "chat", "ui", "utils", "models",
            "extensions")
#: every module name text-generation-webui's `modules` package has (its repository, late 2026); a
#: name here that is not PROVIDED is refused with a message rather than handed Parlour's namesake
TGW_MODULES = frozenset(PROVIDED) | frozenset((
    "LoRA", "api", "callbacks", "evaluate", "exllamav3", "exllamav3_hf", "grammar", "image_models", "image_utils",
    "llama_cpp_server", "loaders", "logits", "metadata_gguf", "models_settings", "paths", "presets", "prompts",
    "reasoning", "sampler_hijack", "sane_markdown_lists", "tensorrt_llm", "tool_parsing", "tool_use", "torch_utils",
    "training", "transformers_loader", "ui_chat", "ui_default", "ui_file_saving", "ui_image_generation",
    "ui_model_menu", "ui_notebook", "ui_parameters", "ui_session", "web_search"))

#: text-generation-webui's `shared.gradio` names -> the Chat tab's controls that do the same job (keys of
#: the "components" dict modules/ui/chat.py returns; modules/ui/extensions.py binds them, with every
#: sampler slider under its preset key). Its other names (its `history` and `interface_state` states, its
#: HTML `display`) have no counterpart: an extension that wires them is disabled, naming the one it needed.
GRADIO_NAMES = {
    "textbox": "input", "character_menu": "character", "mode": "mode", "instruction_template": "template",
    "instruction_template_str": "template_source", "custom_system_message": "system_message",
    "chat-instruct_command": "command", "custom_stopping_strings": "stops", "start_with": "start_with",
    "name1": "your_name", "user_bio": "your_bio", "Generate": "send", "Stop": "stop",
    "Regenerate": "regenerate", "Continue": "continue", "Remove last": "remove", "Impersonate": "impersonate",
    "Send dummy message": "dummy_message", "Send dummy reply": "dummy_reply",
}


class Missing:
    """Marks an error that names something text-generation-webui has and Parlour cannot provide."""

    what: str = ""


class MissingAttribute(Missing, AttributeError):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is not provided by Parlour's text-generation-webui compatibility layer")
        self.what = what


class MissingComponent(Missing, KeyError):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what

    def __str__(self) -> str:
        return f"{self.what} is not a control Parlour's page has"


class MissingModule(Missing, ImportError):
    def __init__(self, name: str) -> None:
        super().__init__(f"text-generation-webui's {name} is not provided by Parlour's compatibility layer",
                         name=name)
        self.what = name


#: the three, for `except` clauses (Missing itself is a marker mixin, not an exception class)
MISSING_ERRORS = (MissingAttribute, MissingComponent, MissingModule)


def missing_attributes(module_name: str) -> Callable[[str], Any]:
    """A PEP 562 `__getattr__` for a surface module: unknown public names raise MissingAttribute."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)  # dunders (__path__, __wrapped__, ...) are ordinary misses
        raise MissingAttribute(f"{module_name}.{name}")

    return __getattr__


class ComponentMap(dict):
    """`shared.gradio`: text-generation-webui's component names -> Parlour's components on the page."""

    def __missing__(self, key: str) -> Any:
        raise MissingComponent(f"shared.gradio[{key!r}]")


class Compat:
    """One App's copy of the surface modules, and the import function its extensions' code runs with."""

    def __init__(self) -> None:
        self.app: Any = None
        self.gradio = ComponentMap()
        self._modules: dict[str, types.ModuleType] = {}
        self._lock = threading.RLock()
        self._package: types.ModuleType | None = None
        self._gradio_shim: types.ModuleType | None = None
        #: extension name -> its script module (also the package its folder's other files load under)
        self.extension_modules: dict[str, types.ModuleType] = {}

    def bind(self, app: Any) -> None:
        """Point the surface at `app` (its model, settings, characters, pipeline)."""
        self.app = app

    # ---- the surface modules -------------------------------------------------------------------
    def module(self, name: str) -> types.ModuleType:
        """The surface module `modules.<name>` of this Compat, created on first use."""
        with self._lock:
            if name in self._modules:
                return self._modules[name]
            if name not in PROVIDED:
                raise MissingModule(f"modules.{name}")
            spec = importlib.util.spec_from_file_location(f"modules.{name}", SURFACE_DIR / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            module._compat = self  # type: ignore[attr-defined]
            self._modules[name] = module  # before running it: surface modules use each other
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del self._modules[name]
                raise
            return module

    def package(self) -> types.ModuleType:
        """The stand-in `modules` package: surface modules and, for other names, Parlour's own."""
        if self._package is None:
            package = types.ModuleType("modules", "text-generation-webui's modules, as Parlour provides them")
            package.__path__ = []  # a package, so `import modules.x` is legal

            def __getattr__(name: str) -> Any:
                if name.startswith("__"):
                    raise AttributeError(name)
                if name in PROVIDED:
                    return self.module(name)
                if name in TGW_MODULES:
                    raise MissingAttribute(f"modules.{name}")
                return importlib.import_module(f"modules.{name}")

            package.__getattr__ = __getattr__  # type: ignore[attr-defined]
            self._package = package
        return self._package

    def gradio_shim(self) -> types.ModuleType:
        if self._gradio_shim is None:
            from modules.tgw_compat._gradio import make_shim

            self._gradio_shim = make_shim()
        return self._gradio_shim

    # ---- imports for extension code ------------------------------------------------------------
    def builtins_for_extension(self) -> dict[str, Any]:
        """The `__builtins__` an extension's modules run with: the real ones, `__import__` replaced."""
        return {**builtins.__dict__, "__import__": self.importer}

    def importer(self, name: str, globals: dict | None = None, locals: Any = None, fromlist: Any = (),
                 level: int = 0) -> Any:
        """`__import__` for extension code (see the module docstring for what it redirects)."""
        if level == 0:
            top = name.partition(".")[0]
            if top == "modules":
                return self._import_modules(name, fromlist)
            if name == "gradio":
                return self.gradio_shim()
            if top == "extensions":
                return self._import_extension(name, fromlist)
        elif globals is not None:
            package = globals.get("__package__") or ""
            ext = self._extension_of(package)
            if ext is not None:
                base = importlib.util.resolve_name("." * level + name, package) if name else \
                    importlib.util.resolve_name("." * level, package)
                self._ensure_loaded(base, fromlist)
        return builtins.__import__(name, globals, locals, fromlist, level)

    def _import_modules(self, name: str, fromlist: Any) -> Any:
        parts = name.split(".")
        if len(parts) == 1:
            package = self.package()
            for item in fromlist or ():
                if item != "*":
                    if item in TGW_MODULES and item not in PROVIDED:
                        raise MissingModule(f"modules.{item}")
                    getattr(package, item)
            return package
        sub = parts[1]
        if sub in PROVIDED and len(parts) == 2:
            module = self.module(sub)
            return module if fromlist else self.package()
        if sub in TGW_MODULES:
            raise MissingModule(name)
        real = importlib.import_module(name)  # Parlour's own module (text-generation-webui has none by this name)
        return real if fromlist else self.package()

    def _extension_of(self, package: str) -> str | None:
        for ext_name, module in self.extension_modules.items():
            if package == module.__name__ or package.startswith(module.__name__ + "."):
                return ext_name
        return None

    def _import_extension(self, name: str, fromlist: Any) -> Any:
        """`extensions.<name>[.sub]`: an extension's folder, as text-generation-webui scripts import it."""
        parts = name.split(".")
        root = types.ModuleType("extensions")
        root.__path__ = []
        for ext_name, module in self.extension_modules.items():
            setattr(root, ext_name, module)
        if len(parts) == 1:
            for item in fromlist or ():
                if item not in self.extension_modules:
                    raise ImportError(f"no enabled extension named {item!r}", name=f"extensions.{item}")
            return root
        module = self.extension_modules.get(parts[1])
        if module is None:
            raise ImportError(f"no enabled extension named {parts[1]!r}", name=f"extensions.{parts[1]}")
        target = ".".join([module.__name__, *parts[2:]])
        self._ensure_loaded(target, fromlist)
        return sys.modules[target] if fromlist else root

    def _ensure_loaded(self, fullname: str, fromlist: Any) -> None:
        """Load `fullname` (a module in an extension's folder) and the submodules `fromlist` names,
        running each with the extension's builtins (the default loader would give them Parlour's)."""
        self._load_submodule(fullname)
        for item in fromlist or ():
            if item != "*" and isinstance(item, str) and item.isidentifier():
                self._load_submodule(f"{fullname}.{item}", must_exist=False)

    def _load_submodule(self, fullname: str, must_exist: bool = True) -> None:
        if fullname in sys.modules:
            return
        parent_name, _, child = fullname.rpartition(".")
        if not parent_name:
            raise ImportError(f"no module named {fullname!r}", name=fullname)
        self._load_submodule(parent_name)
        parent = sys.modules[parent_name]
        for folder in getattr(parent, "__path__", []):
            candidates = [(Path(folder) / child / "__init__.py", [str(Path(folder) / child)]),
                          (Path(folder) / f"{child}.py", None)]
            for path, search in candidates:
                if path.is_file():
                    spec = importlib.util.spec_from_file_location(fullname, path, submodule_search_locations=search)
                    assert spec is not None and spec.loader is not None
                    module = importlib.util.module_from_spec(spec)
                    module.__builtins__ = self.builtins_for_extension()  # type: ignore[attr-defined]
                    sys.modules[fullname] = module
                    try:
                        spec.loader.exec_module(module)
                    except BaseException:
                        sys.modules.pop(fullname, None)
                        raise
                    setattr(parent, child, module)
                    return
        if must_exist:
            raise ImportError(f"no module named {fullname!r}", name=fullname)
