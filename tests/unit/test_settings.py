import subprocess
import sys

import pytest

from modules.settings import Settings, SettingsError, build_parser, load_settings
from tests.conftest import ROOT


def test_defaults_then_file_then_command_line(tmp_path):
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("port: 9000\nthreads: 3\npreset: Creative\n")
    settings = load_settings(["--settings", str(settings_file), "--port", "8123"])
    assert settings.port == 8123          # command line beats the file
    assert settings.threads == 3          # the file beats the default
    assert settings.preset == "Creative"
    assert settings.listen is False       # default


def test_invalid_value_names_the_key_and_source(tmp_path):
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("port: 99999\n")
    with pytest.raises(SettingsError, match=r"settings.yaml.*port"):
        load_settings(["--settings", str(settings_file)])
    with pytest.raises(SettingsError, match=r"command line.*threads"):
        load_settings(["--settings", str(settings_file), "--threads", "zero"])


def test_unknown_key_and_wrong_root_type_are_errors(tmp_path):
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("prot: 1\n")
    with pytest.raises(SettingsError, match="prot"):
        load_settings(["--settings", str(settings_file)])
    settings_file.write_text("- a\n- b\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(["--settings", str(settings_file)])
    settings_file.write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(SettingsError):
        load_settings(["--settings", str(settings_file)])


def test_every_setting_has_a_flag_with_help():
    help_text = build_parser().format_help()
    for name, field in Settings.model_fields.items():
        assert "--" + name.replace("_", "-") in help_text
        assert field.description, f"{name} has no description"


def test_server_help_lists_flags_and_exits():
    out = subprocess.run([sys.executable, "server.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for flag in ["--port", "--model", "--models-dir", "--settings", "--threads", "--listen", "--api-key"]:
        assert flag in out.stdout


def test_secrets_are_masked_in_dumps():
    settings = Settings(api_key="hunter2")
    assert "hunter2" not in str(settings.public_dict())
    assert "hunter2" not in repr(settings)


def test_listen_without_key_refuses_to_start(tmp_path):
    out = subprocess.run([sys.executable, "server.py", "--listen", "--settings", str(tmp_path / "s.yaml")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "--api-key" in out.stderr


def test_logins_from_auth_and_auth_file(tmp_path):
    logins_file = tmp_path / "logins.txt"
    logins_file.write_text("# team\ncarol:pw:with:colons\n\ndave:d\n")
    settings = Settings(auth="ann:a, bob:b", auth_file=logins_file)
    assert settings.logins() == {"ann": "a", "bob": "b", "carol": "pw:with:colons", "dave": "d"}
    assert "a, bob" not in str(settings.public_dict())
    assert Settings().logins() == {}
    with pytest.raises(SettingsError, match="user:password"):
        Settings(auth="nopassword").logins()
    with pytest.raises(SettingsError, match="cannot read"):
        Settings(auth_file=tmp_path / "missing.txt").logins()


def test_bad_auth_refuses_to_start_and_auth_allows_listen(tmp_path):
    out = subprocess.run([sys.executable, "server.py", "--auth", "broken", "--settings", str(tmp_path / "s.yaml")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "user:password" in out.stderr
    from server import check_exposure

    assert "--auth" in check_exposure(Settings(listen=True)) and "--api-key" in check_exposure(Settings(listen=True))
    # one lock does not guard the other door
    assert "--api-key" in check_exposure(Settings(listen=True, auth="ann:pw"))
    assert "--auth" in check_exposure(Settings(listen=True, api_key="k"))
    assert check_exposure(Settings(listen=True, auth="ann:pw", api_key="k")) is None
    assert check_exposure(Settings(listen=True, auth="ann:pw", api=False)) is None
    assert check_exposure(Settings(listen=True, insecure_listen=True)) is None
    assert check_exposure(Settings(listen=False)) is None


def test_gradio_login_check_is_exact():
    from modules.ui import auth_check

    check = auth_check(Settings(auth="ann:secret"))
    assert check("ann", "secret") and not check("ann", "Secret") and not check("bob", "secret")
    assert auth_check(Settings()) is None


@pytest.mark.parametrize("cores, flags, expected", [
    (2, {}, (2, 2, True)),  # two cores: both, and the batch engine tries one
    (8, {}, (7, 8, True)),  # a core left to the server while generating; prompts use all
    (1, {}, (1, 1, True)),
    (8, {"threads": 3, "threads_batch": 5}, (3, 5, False)),  # the user's count is not second-guessed
])
def test_cpu_threads_for_generating_and_for_prompts(monkeypatch, cores, flags, expected):
    from modules.settings import CpuThreads

    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert Settings(**flags).cpu_threads() == CpuThreads(*expected)


def _tune(step_ms: dict[int, float], rows: int = 1) -> tuple[int, list[int]]:
    """Drive a ThreadTuner(1, 2) with fixed step times per thread count: (its choice, counts used)."""
    from modules.batching import ThreadTuner

    tuner = ThreadTuner(1, 2)
    used = []
    while tuner.chosen is None:
        count = tuner.threads()
        used.append(count)
        tuner.record(count, rows, step_ms[count] / 1000)
        assert len(used) < 1000
    return tuner.chosen, used


def test_thread_tuner_keeps_fewer_threads_unless_more_are_clearly_faster():
    from modules.batching import ThreadTuner

    assert _tune({1: 4.0, 2: 4.0})[0] == 1  # as fast (memory-bound): the core goes to the server
    assert _tune({1: 4.1, 2: 4.0})[0] == 1  # within the margin
    assert _tune({1: 6.6, 2: 4.0})[0] == 2  # arithmetic-bound (bfloat16 on 2 cores): 1.64x
    chosen, used = _tune({1: 4.0, 2: 9.0})
    block = ThreadTuner.BLOCK
    assert used[:2 * block] == [1] * block + [2] * block  # alternating blocks until it decides
    assert used.count(1) == used.count(2) == block * ThreadTuner.ROUNDS


def test_thread_tuner_compares_steps_of_the_same_batch_size_only():
    from modules.batching import ThreadTuner

    tuner = ThreadTuner(1, 2)
    # one thread on 1-row steps, two threads on 4-row steps: never comparable, so no choice
    for _ in range(200):
        count = tuner.threads()
        tuner.record(count, 1 if count == 1 else 4, 0.004)
    assert tuner.chosen is None


def test_model_aliases_and_budgets_from_the_command_line_and_the_file(tmp_path):
    settings_file = tmp_path / "s.yaml"
    settings_file.write_text("model_alias: {gpt-4o: parlour-demo}\nmax_loaded_models: 3\n")
    s = load_settings(["--settings", str(settings_file)])
    assert s.model_alias == {"gpt-4o": "parlour-demo"} and s.model_budget().max_models == 3
    s = load_settings(["--settings", str(settings_file), "--model-alias", "gpt-4o-mini=parlour-demo",
                       "--model-alias", "v1.5=1.5", "--gpu-memory-budget", "20GiB", "--cpu-memory-budget", "512MiB"])
    assert s.model_alias == {"gpt-4o-mini": "parlour-demo", "v1.5": "1.5"}  # names stay text; repeated flags add up
    assert (s.model_budget().gpu_mib, s.model_budget().cpu_mib) == (20480, 512)
    with pytest.raises(SettingsError, match="gpu_memory_budget"):
        load_settings(["--settings", str(settings_file), "--gpu-memory-budget", "lots"])
    with pytest.raises(SystemExit):  # argparse: not KEY=VALUE
        load_settings(["--settings", str(settings_file), "--model-alias", "gpt-4o"])
