"""download-model.py against a local HTTP server that speaks the Hub's API (no internet here)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modules.download import DownloadError, parse_spec, plan, selected
from tests.conftest import ROOT
from tests.fake_hub import FakeHub


@pytest.fixture()
def hub(micro_path):
    model_files = {p.name: p.read_bytes() for p in micro_path.iterdir() if p.is_file()}
    repos = {
        "tester/tiny": {**model_files, "pytorch_model.bin": b"pickle", "modeling_evil.py": b"import os"},
        "tester/tiny-GGUF": {"tiny.Q4_K_M.gguf": b"GGUF4", "tiny.Q8_0.gguf": b"GGUF8", "README.md": b"hi"},
        "tester/lora": {"adapter_config.json": b"{}", "adapter_model.safetensors": b"x"},
    }
    server = FakeHub(repos)
    yield server
    server.close()


def run_download(hub, tmp_path, *args):
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_secret_token", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, str(ROOT / "download-model.py"), *args, "--models-dir",
                           str(tmp_path / "models"), "--loras-dir", str(tmp_path / "loras")],
                          env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_transformers_repo_downloads_safetensors_without_code_and_loads(hub, tmp_path, make_app):
    out = run_download(hub, tmp_path, "tester/tiny")
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "models" / "tester_tiny"
    names = {p.name for p in folder.iterdir() if p.is_file()}
    assert "model.safetensors" in names and "config.json" in names
    assert "pytorch_model.bin" not in names and "modeling_evil.py" not in names
    assert "Bearer hf_secret_token" in hub.auth_headers  # HF_TOKEN respected
    app = make_app(models_dir=tmp_path / "models")
    assert app.models.load("tester_tiny").info()["architecture"] == "llama"


def test_gguf_repo_needs_a_quant_choice(hub, tmp_path):
    out = run_download(hub, tmp_path, "tester/tiny-GGUF")
    assert out.returncode == 2 and "tiny.Q4_K_M.gguf" in out.stderr and "--gguf-quant" in out.stderr
    out = run_download(hub, tmp_path, "tester/tiny-GGUF", "--gguf-quant", "q8_0")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "models" / "tiny.Q8_0.gguf").read_bytes() == b"GGUF8"
    assert not (tmp_path / "models" / "tiny.Q4_K_M.gguf").exists()


def test_lora_repo_goes_to_loras(hub, tmp_path):
    out = run_download(hub, tmp_path, "tester/lora:main")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "loras" / "tester_lora" / "adapter_config.json").exists()


def test_missing_repo_is_a_clear_error(hub, tmp_path):
    out = run_download(hub, tmp_path, "tester/nothing")
    assert out.returncode == 2 and "tester/nothing" in out.stderr


@pytest.mark.parametrize("spec", ["../../etc", "user/../repo", "a/b:../../x", "/abs/path", "user"])
def test_bad_specs_are_refused(spec):
    with pytest.raises(DownloadError):
        parse_spec(spec)


def test_allow_code_and_split_gguf_plans(tmp_path):
    files = ["config.json", "model.safetensors", "modeling.py"]
    assert "modeling.py" in selected(files, plan("a/b", "main", files, tmp_path, tmp_path, allow_code=True))
    split = ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf", "other.Q2_K.gguf"]
    chosen = plan("a/b", "main", split, tmp_path, tmp_path, gguf_quant="m-0")
    assert selected(split, chosen) == ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]


# -- background downloads in the server (the Model tab's box) -----------------------------------------
def test_no_network_is_one_clear_line(tmp_path, monkeypatch):
    from modules.download import Downloads
    from tests.conftest import free_port

    port = free_port()  # nothing listens there
    expected = f"cannot reach the Hugging Face Hub (http://127.0.0.1:{port}): [Errno 111] Connection refused"
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, str(ROOT / "download-model.py"), "tester/tiny", "--models-dir",
                          str(tmp_path / "models")], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and out.stderr.strip() == f"error: {expected}"
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    downloads = Downloads(tmp_path / "models", tmp_path / "loras")
    job = downloads.start("tester/tiny")
    until(lambda: job.state != "running")
    assert job.state == "failed" and job.message == expected


def until(predicate, timeout: float = 120.0) -> None:
    """Wait for a state (of a job, of the fake Hub), never for time to pass."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the state never came"
        time.sleep(0.01)


@pytest.fixture()
def slow_hub(micro_path, monkeypatch):
    """A Hub whose model repo has a 24 MiB file that stops halfway until the test lets it go on."""
    from tests.fake_hub import model_repo

    server = FakeHub({"tester/tiny": model_repo(micro_path, extra_mib=24)})
    server.hold("notes.txt")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.close()


def test_a_download_runs_in_the_background_with_progress_while_a_chat_streams(slow_hub, make_app, micro_path,
                                                                              tmp_path):
    import shutil

    from modules.generation import GenerationRequest
    from modules.presets import Preset

    models = tmp_path / "models"
    shutil.copytree(micro_path, models / "parlour-micro")
    app = make_app(models_dir=models)
    app.models.load("parlour-micro")
    request = dict(preset=Preset(temperature=0.0, max_new_tokens=40, ban_eos_token=True), prompt="def main():")
    before = list(app.pipeline.stream(GenerationRequest(**request)))[-1].text

    job = app.downloads.start("tester/tiny")
    slow_hub.halfway.wait(timeout=120)
    until(lambda: job.snapshot()["bytes_done"] >= 10 * 2**20)  # huggingface_hub reports 10 MiB chunks
    shown = job.snapshot()
    assert shown["state"] == "running" and 0 < shown["fraction"] < 1 and shown["bytes_total"] > 24 * 2**20
    assert "tester_tiny" not in app.models.list()  # a half-downloaded model is never listed
    # the transfer is a process of its own at a lower CPU priority: it shares neither the GIL nor, on a
    # busy machine, the cores with the model
    assert job.process.pid != os.getpid() and os.getpriority(os.PRIO_PROCESS, job.process.pid) >= 10
    # The download is stuck halfway; a chat (and the API: the same pipeline) answers meanwhile, unchanged.
    assert list(app.pipeline.stream(GenerationRequest(**request)))[-1].text == before
    assert app.downloads.running()

    slow_hub.release()
    until(lambda: job.state != "running")
    assert job.state == "done", job.message
    assert "tester_tiny" in app.models.list() and not (models / "tester_tiny.partial").exists()
    assert (models / "tester_tiny" / "notes.txt").stat().st_size == 24 * 2**20
    assert job.snapshot()["fraction"] == 1.0
    assert app.models.backend_for("tester_tiny").info()["architecture"] == "llama"  # it loads, no restart


def test_a_cancelled_download_leaves_nothing_behind(slow_hub, tmp_path):
    from modules.download import Downloads

    downloads = Downloads(tmp_path / "models", tmp_path / "loras")
    job = downloads.start("tester/tiny")
    slow_hub.halfway.wait(timeout=120)
    until(lambda: job.snapshot()["bytes_done"] > 0)
    assert downloads.cancel() == 1
    slow_hub.release()  # the transfer notices at its next chunk
    until(lambda: job.state != "running")
    assert job.state == "cancelled"
    assert list((tmp_path / "models").iterdir()) == []  # neither the model nor its .partial folder


def alive(pid: int) -> bool:
    """The process exists and is not a zombie left for a parent that died."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_download_ends_with_a_server_killed_outright(slow_hub, tmp_path):
    """A server stopped by SIGKILL runs no `finally`: its download process must still not go on alone."""
    script = ("import sys; from pathlib import Path; from modules.download import Downloads; "
              f"job = Downloads(Path({str(tmp_path / 'models')!r}), Path({str(tmp_path / 'loras')!r})).start('tester/tiny'); "
              "print(job.process.pid, flush=True); sys.stdin.read()")
    server = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    child = int(server.stdout.readline())
    slow_hub.halfway.wait(timeout=120)  # the child is transferring
    assert alive(child)
    server.kill()
    server.wait()
    until(lambda: not alive(child))
