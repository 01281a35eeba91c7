"""Extensions without a model: discovery, requirements, settings, pip entry points, calling styles, isolation."""

from __future__ import annotations

import sys
import textwrap
import threading
from pathlib import Path

import pytest

from modules.extensions import Extensions, history_to_messages, messages_to_history
from modules.settings import Settings, SettingsError, load_settings

BUILTIN = Path(__file__).resolve().parents[2] / "extensions"


def write(root: Path, name: str, code: str, requirements: str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "script.py").write_text(textwrap.dedent(code))
    if requirements is not None:
        (folder / "requirements.txt").write_text(requirements)
    return folder


@pytest.fixture()
def dirs(tmp_path):
    return tmp_path / "builtin", tmp_path / "user"


def make(dirs, names=(), **kwargs) -> Extensions:
    ext = Extensions(builtin_dir=dirs[0], user_dir=dirs[1], entry_points=kwargs.pop("entry_points", False), **kwargs)
    errors = ext.enable(list(names))
    ext.errors = errors
    return ext


def test_user_folder_wins_over_builtin_on_a_name_clash(dirs):
    write(dirs[0], "same", "def output_modifier(string, state, is_chat=False):\n    return 'built-in'\n")
    write(dirs[1], "same", "def output_modifier(string, state, is_chat=False):\n    return 'user'\n")
    write(dirs[0], "only_builtin", "")
    ext = make(dirs, ["same"])
    assert {n: s.kind for n, s in ext.available().items()} == {"same": "user", "only_builtin": "built-in"}
    assert ext.output("x", {}) == "user"


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "", "con"])
def test_unsafe_names_are_refused_clearly(dirs, name):
    ext = make(dirs, [name])
    assert not ext.loaded
    assert "invalid extension name" in ext.errors[name]


def test_unknown_extension_is_reported_not_fatal(dirs):
    write(dirs[0], "real", "")
    ext = make(dirs, ["missing", "real"])
    assert list(ext.loaded) == ["real"]
    assert "no extension named 'missing'" in ext.errors["missing"]
    assert "missing" in ext.status_markdown() and "not found" in ext.status_markdown()


def test_missing_requirement_disables_the_extension_with_the_pip_command(dirs):
    write(dirs[0], "needs", "import surely_not_installed_pkg\n", requirements="# comment\nsurely-not-installed-pkg>=1.0\n")
    write(dirs[0], "satisfied", "", requirements="pyyaml>=6\n")
    write(dirs[0], "too_new", "", requirements="pyyaml>=999\n")
    ext = make(dirs, ["needs", "satisfied", "too_new"])
    assert list(ext.loaded) == ["satisfied"]
    assert ext.loaded["satisfied"].requirements == ["pyyaml>=6"]
    assert "surely-not-installed-pkg>=1.0" in ext.errors["needs"] and "pip install -r" in ext.errors["needs"]
    assert "installed: 6." in ext.errors["too_new"]


def test_text_generation_webui_internals_it_lacks_get_a_clear_message(dirs):
    write(dirs[0], "tgw", "from modules import shared\n")  # provided now (modules/tgw_compat)
    write(dirs[0], "no_module", "from modules import chat, ui_chat\n")
    write(dirs[0], "no_attr", "from modules.ui import gather_interface_values\n")
    write(dirs[0], "unknown", "import modules.text_generation_internal\n")
    ext = make(dirs, ["tgw", "no_module", "no_attr", "unknown"])
    assert list(ext.loaded) == ["tgw"]
    assert "needs modules.ui_chat" in ext.errors["no_module"]
    assert "needs modules.ui.gather_interface_values" in ext.errors["no_attr"]
    assert "imports modules.text_generation_internal" in ext.errors["unknown"]


def test_syntax_error_in_script_is_a_load_error(dirs):
    write(dirs[0], "typo", "def output_modifier(:\n")
    assert "SyntaxError" in make(dirs, ["typo"]).errors["typo"]


def test_settings_params_override_the_extensions_own_dict(dirs):
    write(dirs[0], "p", """
        params = {"display_name": "P", "greeting": "hello", "times": 1}
        def output_modifier(string, state, is_chat=False):
            return params["greeting"] * params["times"]
        """)
    ext = make(dirs, ["p"], settings_params={"p-greeting": "hey", "p-times": 2, "other-x": 1, "p-nope": 3})
    assert ext.output("", {}) == "heyhey"
    assert ext.loaded["p"].display_name == "P"
    assert ext.unknown_settings_params() == ["other-x", "p-nope"]
    assert "other-x" in ext.status_markdown()


def test_two_instances_do_not_share_an_extensions_params(dirs):
    write(dirs[0], "p", "params = {'value': 'a'}\n")
    one = make(dirs, ["p"], settings_params={"p-value": "one"})
    two = make(dirs, ["p"], settings_params={"p-value": "two"})
    assert one.loaded["p"].params["value"] == "one" and two.loaded["p"].params["value"] == "two"


def test_modifiers_chain_in_load_order_and_first_custom_wins(dirs):
    write(dirs[0], "a", """
        def input_modifier(string, state, is_chat=False):
            return string + "a"
        def custom_tokenized_length(prompt):
            return None
        """)
    write(dirs[0], "b", """
        def input_modifier(string, state, is_chat=False):
            return string + "b"
        def custom_tokenized_length(prompt):
            return 7
        """)
    write(dirs[0], "c", "def custom_tokenized_length(prompt):\n    return 9\n")
    assert make(dirs, ["a", "b", "c"]).input("", {}) == "ab"
    assert make(dirs, ["b", "a", "c"]).input("", {}) == "ba"
    assert make(dirs, ["a", "b", "c"]).tokenized_length("x") == 7   # a declines (None), b answers first
    assert make(dirs, ["c", "b"]).tokenized_length("x") == 9


def test_legacy_signatures_are_called_positionally(dirs):
    write(dirs[0], "old", """
        def input_modifier(text):                      # the oldest form: no state, no is_chat
            return text + "1"
        def output_modifier(reply, st, is_chat=False): # free names, as text-generation-webui allows
            return reply + ("chat" if is_chat else "note") + st["k"]
        def chat_input_modifier(*args):
            return args[0] + "!", args[1]
        """)
    ext = make(dirs, ["old"])
    assert ext.input("x", {}, is_chat=True) == "x1"
    assert ext.output("r", {"k": "K"}, is_chat=True) == "rchatK"
    assert ext.chat_input("t", "v", {}) == ("t!", "v")


def test_pluggy_marked_plugin_gets_arguments_by_name(dirs):
    write(dirs[0], "native", """
        from modules.hookspecs import hookimpl
        @hookimpl
        def output_modifier(state, string):            # any subset, any order: pluggy's convention
            return string + state["k"]
        @hookimpl
        def input_modifier(is_chat, string):
            return string + str(is_chat)
        def helper_not_a_hook(x):
            return x
        """)
    ext = make(dirs, ["native"])
    assert ext.output("s", {"k": "!"}) == "s!"
    assert ext.input("s", {}, is_chat=True) == "sTrue"


def test_marked_hook_with_unknown_argument_is_rejected_by_pluggy(dirs):
    write(dirs[0], "typo", """
        from modules.hookspecs import hookimpl
        @hookimpl
        def output_modifier(strng):
            return strng
        """)
    assert "invalid hook" in make(dirs, ["typo"]).errors["typo"] and "strng" in make(dirs, ["typo"]).errors["typo"]


def test_pip_package_with_an_entry_point_is_discovered(dirs, tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "parlour_shout.py").parent.mkdir(parents=True)
    (site / "parlour_shout.py").write_text(textwrap.dedent("""
        from modules.hookspecs import hookimpl
        params = {"display_name": "Shout", "mark": "!"}
        @hookimpl
        def output_modifier(string):
            return string.upper() + params["mark"]
        """))
    dist = site / "parlour_shout-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: parlour-shout\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[parlour]\nshout = parlour_shout\n")
    monkeypatch.syspath_prepend(str(site))
    ext = make(dirs, ["shout"], entry_points=True, settings_params={"shout-mark": "?"})
    assert ext.available()["shout"].kind == "pip"
    assert ext.output("hi", {}) == "HI?"
    write(dirs[1], "shout", "def output_modifier(string, state, is_chat=False):\n    return 'folder'\n")
    assert make(dirs, ["shout"], entry_points=True).output("hi", {}) == "folder"   # a folder wins over pip


def test_isolation_raise_wrong_type_timeout(dirs):
    write(dirs[0], "raises", "def state_modifier(state):\n    raise RuntimeError('bad state')\n")
    write(dirs[0], "wrong", "def history_modifier(history):\n    return ['not', 'a', 'dict']\n")
    write(dirs[0], "hangs", """
        import threading
        gate = threading.Event()
        def bot_prefix_modifier(string, state):
            gate.wait(30)
            return string
        """)
    ext = make(dirs, ["raises", "wrong", "hangs"], timeout=0.3)
    try:
        assert ext.state({"a": 1}) == {"a": 1}
        history = {"internal": [["u", "b"]], "visible": [["u", "b"]]}
        assert ext.history(history) == history
        assert ext.bot_prefix("P", {}) == "P"
        assert ext.bot_prefix("Q", {}) == "Q"
        assert "bot_prefix_modifier" in ext.loaded["hangs"].dead_hooks
        assert "RuntimeError: bad state" in ext.failures["raises"][0]
        assert "expected dict with 'internal'" in ext.failures["wrong"][0]
        assert len(ext.failures["hangs"]) == 1
        assert "stopped calling: bot_prefix_modifier" in ext.status_markdown()
    finally:
        ext.loaded["hangs"].module.gate.set()


def test_logits_processor_hook_in_place_or_returned_list_and_guarded(dirs):
    import torch

    write(dirs[0], "inplace", "def logits_processor_modifier(processor_list, input_ids):\n"
                              "    processor_list.append(lambda ids, s: s + 1)\n")
    write(dirs[0], "returns", "def logits_processor_modifier(processor_list, input_ids):\n"
                              "    return processor_list + [lambda ids, s: s * 2]\n")
    write(dirs[0], "shape", "def logits_processor_modifier(processor_list, input_ids):\n"
                            "    processor_list.append(lambda ids, s: s[:, :1])\n")
    ext = make(dirs, ["inplace", "returns", "shape"])
    chain = ext.logits_processors([], torch.tensor([[1]]))
    scores = torch.zeros(1, 3)
    for processor in chain:
        scores = processor(torch.tensor([[1]]), scores)
    assert scores.tolist() == [[2.0, 2.0, 2.0]]
    assert "wrong shape" in ext.failures["shape"][0]


def test_history_conversion_round_trip():
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}]
    history = messages_to_history(messages)
    assert history == {"internal": [["a", "b"], ["c", ""]], "visible": [["a", "b"], ["c", ""]]}
    system = [{"role": "system", "content": "s"}]
    assert history_to_messages(history, system) == system + messages


def test_settings_extensions_flags_and_yaml(tmp_path):
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("default_extensions: [character_bias]\ncharacter_bias-bias string: '*hi*'\n"
                             "character_bias-activate: true\n")
    settings = load_settings(["--settings", str(settings_file), "--extensions", "token_stats", "long_replies",
                              "--extension-params", "character_bias-activate=false", "long_replies-min_length=50"])
    assert settings.extensions == ["token_stats", "long_replies"]
    assert settings.default_extensions == ["character_bias"]
    assert settings.extension_params == {"character_bias-bias string": "*hi*", "character_bias-activate": False,
                                         "long_replies-min_length": 50}
    settings_file.write_text("api-key: secret\n")
    with pytest.raises(SettingsError, match="api_key"):
        load_settings(["--settings", str(settings_file)])
    settings_file.write_text("not_a_setting: 1\n")
    with pytest.raises(SettingsError, match="not_a_setting"):
        load_settings(["--settings", str(settings_file)])


def test_settings_enable_builtins_in_order(tmp_path):
    settings = Settings(user_data=tmp_path, default_extensions=["token_stats"],
                        extensions=["character_bias", "token_stats"],
                        extension_params={"character_bias-bias string": "*wave*"})
    ext = Extensions.from_settings(settings, BUILTIN)
    assert list(ext.loaded) == ["token_stats", "character_bias"]
    assert ext.bot_prefix("<start>", {}) == "<start>*wave* "


def test_hook_calls_do_not_leak_threads(dirs):
    import time

    write(dirs[0], "a", "def output_modifier(string, state, is_chat=False):\n    return string\n")
    ext = make(dirs, ["a"])
    before = threading.active_count()
    for _ in range(50):
        ext.output("x", {})
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)  # polls a real condition: each hook's thread ends right after answering
    assert threading.active_count() <= before
    assert sys.modules["parlour_extension_a"] is ext.loaded["a"].module
