"""LoRA training on the micro model through TrainingManager: the loss falls, the served model is left as it
was, Stop + Resume equals an uninterrupted run, a crash leaves a usable checkpoint, and every model or
name that cannot be trained is refused before anything is written."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from modules.models import ModelError
from modules.presets import Preset
from modules.training import TrainingError
from modules.training.data import DataError
from modules.training.job import TrainingManager
from modules.training.plan import latest_checkpoint
from modules.training.settings import TrainingSettings
from tests.training_data import QUESTION, chat_lines, write_jsonl

GREEDY = Preset(temperature=0.0, max_new_tokens=16)
FAST = dict(learning_rate=1e-2, threads=1)


@pytest.fixture()
def env(make_app, tmp_path):
    app = make_app(loras_dir=tmp_path / "loras")
    app.models.load("parlour-micro")
    job = TrainingManager(app.models, tmp_path / "loras", tmp_path / "runs", app.store)
    data = write_jsonl(tmp_path / "training" / "qa.jsonl", chat_lines(16))
    return app, job, data


def until(predicate, what: str, timeout: float = 120.0):
    """Wait for a state (never a duration): polls `predicate` until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


def reply(backend) -> str:
    prompt = backend.chat_template.render([{"role": "user", "content": QUESTION}])
    return "".join(d.text for d in backend.stream(prompt, GREEDY, threading.Event()))


def nothing_written(tmp_path) -> bool:
    return not any((tmp_path / "loras").glob("*")) and not any((tmp_path / "runs").glob("*"))


def test_loss_falls_and_the_served_model_is_left_as_it_was(env, tmp_path):
    app, job, data = env
    backend = app.models.current()
    before_text = reply(backend)
    before_grad = {n: p.requires_grad for n, p in backend.model.named_parameters()}
    final = job.run(job.plan(TrainingSettings(output="qa", max_steps=30, **FAST), dataset=data))
    assert final.state == "done", final.message
    losses = [loss for _, loss in final.losses]
    assert [s for s, _ in final.losses] == list(range(1, 31))
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]
    # the adapter and its card, and nothing half-written beside it
    folder = tmp_path / "loras" / "qa"
    assert {p.name for p in (tmp_path / "loras").iterdir()} == {"qa"}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "parlour-training.json"} <= {
        p.name for p in folder.iterdir()}
    card = json.loads((folder / "parlour-training.json").read_text())
    assert card["base_model"] == "parlour-micro" and card["steps"] == 30
    assert card["data"]["name"] == "qa.jsonl"
    assert card["data"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert card["final_train_loss"] == pytest.approx(losses[-1]) and card["seconds"] > 0
    assert card["settings"]["max_steps"] == 30 and card["settings"]["learning_rate"] == 1e-2
    readme = (folder / "README.md").read_text()
    assert "parlour-micro" in readme and card["data"]["sha256"][:16] in readme
    assert not (tmp_path / "runs" / "qa").exists()  # checkpoints go once the adapter is saved
    # the served model: no LoRA layers left, same flags, same greedy reply
    assert not any("lora_" in n for n, _ in backend.model.named_parameters())
    assert {n: p.requires_grad for n, p in backend.model.named_parameters()} == before_grad
    assert not backend.model.training and reply(backend) == before_text
    assert app.models.list_loras() == ["qa"]
    ids = backend.tokenize(backend.chat_template.render([{"role": "user", "content": QUESTION}]))
    plain = backend.next_token_logits(ids).clone()
    app.models.set_loras(["qa"])
    assert not torch.allclose(app.models.current().next_token_logits(ids), plain)


def test_stop_then_resume_equals_an_uninterrupted_run(env, tmp_path):
    app, job, data = env
    settings = dict(max_steps=12, lr_scheduler="cosine", warmup_steps=2, micro_batch=3, grad_accum=2,
                    eval_split=0.2, save_steps=100, **FAST)  # dropout stays on: the RNG state must resume too
    whole = job.run(job.plan(TrainingSettings(output="whole", **settings), dataset=data))
    assert whole.state == "done", whole.message

    def stop_at_five(progress):
        if progress.step == 5:
            job.stop()

    stopped = job.run(job.plan(TrainingSettings(output="parts", **settings), dataset=data), (stop_at_five,))
    assert stopped.state == "stopped" and stopped.step == 5, stopped.message
    checkpoint = latest_checkpoint(tmp_path / "runs" / "parts")
    assert checkpoint.name == "checkpoint-5"
    assert torch.load(checkpoint / "scheduler.pt", weights_only=True)["last_epoch"] == 5
    assert not (tmp_path / "loras" / "parts").exists() and job.resumable() == ["parts"]

    seen = []
    resumed = job.run(job.plan_resume("parts"), (lambda p: seen.append(p.step),))
    assert resumed.state == "done", resumed.message
    assert seen[0] == 6  # the step count continues
    a = load_file(tmp_path / "loras" / "whole" / "adapter_model.safetensors")
    b = load_file(tmp_path / "loras" / "parts" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    cards = [json.loads((tmp_path / "loras" / n / "parlour-training.json").read_text()) for n in ("whole", "parts")]
    assert [s for s, _ in cards[1]["losses"]] == list(range(1, 13))  # the plot keeps the first session's points
    for key in ("losses", "eval_losses"):  # the scheduler and optimizer continued where they were
        assert [s for s, _ in cards[0][key]] == [s for s, _ in cards[1][key]]
        assert [v for _, v in cards[0][key]] == pytest.approx([v for _, v in cards[1][key]], rel=1e-5)
    assert cards[1]["final_eval_perplexity"] is not None


def test_a_crash_mid_run_leaves_the_last_checkpoint_usable(env, tmp_path):
    app, job, data = env

    def crash(progress):
        if progress.step == 7 and progress.running:
            raise RuntimeError("power cut")

    settings = TrainingSettings(output="crashy", max_steps=10, save_steps=3, **FAST)
    failed = job.run(job.plan(settings, dataset=data), (crash,))
    assert failed.state == "failed"
    assert "power cut" in failed.message and "Resume continues from it" in failed.message
    assert not any((tmp_path / "loras").glob("*"))  # no adapter, no partial folder
    run_dir = tmp_path / "runs" / "crashy"
    assert latest_checkpoint(run_dir).name == "checkpoint-6"
    torn = run_dir / "checkpoint-9"  # as a kill in the middle of saving leaves it: no trainer_state.json
    torn.mkdir()
    (torn / "adapter_model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(run_dir).name == "checkpoint-6"
    seen = []
    done = job.run(job.plan_resume("crashy"), (lambda p: seen.append(p.step),))
    assert done.state == "done" and seen[0] == 7 and done.step == 10
    assert (tmp_path / "loras" / "crashy" / "adapter_model.safetensors").is_file()
    # and the served model still answers
    assert app.models.current().model.training is False


def test_one_job_at_a_time_and_nothing_else_touches_the_model(env, tmp_path):
    app, job, data = env
    job.start(job.plan(TrainingSettings(output="long", max_steps=100_000, save_steps=100_000, **FAST), dataset=data))
    until(lambda: job.progress().step >= 1, "the first step")
    with pytest.raises(TrainingError, match="training long is running: stop it first"):
        job.plan(TrainingSettings(output="other", **FAST), dataset=data)
    for attempt in (lambda: app.models.load("parlour-micro-gpt2"), app.models.unload,
                    lambda: app.models.set_loras([])):
        with pytest.raises(ModelError, match="training long is using parlour-micro: stop it first"):
            attempt()
    assert not app.models.unload_if_idle(0)
    assert "training long" in app.models.status()
    assert job.stop()
    stopped = job.join(120)
    assert stopped.state == "stopped" and "checkpoint saved" in stopped.message
    assert app.models.current().name == "parlour-micro"
    app.models.load("parlour-micro-gpt2")  # the model is free again


def test_models_that_cannot_be_trained_are_refused_before_anything_is_written(env, tmp_path):
    app, job, data = env
    settings = TrainingSettings(output="x", **FAST)
    app.models.load("parlour-micro", options={"load_in_8bit": True})
    with pytest.raises(TrainingError, match="bitsandbytes 8-bit weights on the CPU, which cannot be trained"):
        job.plan(settings, dataset=data)
    app.models.load("parlour-micro", options={"context_length": 128})
    with pytest.raises(TrainingError, match=r"cutoff \(256 tokens\) is longer than parlour-micro's context \(128\)"):
        job.plan(settings, dataset=data)
    with pytest.raises(TrainingError, match="QLoRA needs a CUDA GPU"):
        job.plan(TrainingSettings(output="x", qlora=True, cutoff=64), dataset=data)
    app.models.load("parlour-micro", options={"max_cpu_memory": "0.1MiB", "disk_offload": True})
    with pytest.raises(TrainingError, match="parlour-micro is offloaded to disk: training needs every weight"):
        job.plan(settings, dataset=data)
    app.models.unload()
    with pytest.raises(TrainingError, match="no model is loaded"):
        job.plan(settings, dataset=data)
    assert nothing_written(tmp_path)


def test_names_in_use_and_applied_loras_are_refused(env, tmp_path):
    app, job, data = env
    assert job.run(job.plan(TrainingSettings(output="first", max_steps=2, **FAST), dataset=data)).state == "done"
    with pytest.raises(TrainingError, match="loras/first already exists: choose another name"):
        job.plan(TrainingSettings(output="first", **FAST), dataset=data)
    app.models.set_loras(["first"])
    with pytest.raises(TrainingError, match=r"LoRAs are applied to parlour-micro \(first\): remove them"):
        job.plan(TrainingSettings(output="second", **FAST), dataset=data)
    with pytest.raises(ValueError, match="bad adapter name"):
        TrainingSettings(output="../escape")
    app.models.set_loras([])
    with pytest.raises(TrainingError, match=r"target module 'nope_proj' is not in this model; its linear layers are "
                                            r"down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"):
        job.plan(TrainingSettings(output="second", target_modules="q_proj,nope_proj", **FAST), dataset=data)
    assert "LoRA on q_proj, v_proj" in job.plan(TrainingSettings(output="second", **FAST), dataset=data).report


@pytest.mark.parametrize(("lines", "settings", "expected"), [
    ("not json at all\n", {}, "bad.jsonl line 1: not JSON"),
    ('{"instruction": "q", "output": "a"}\n{"instruction": "q"}\n', {}, "bad.jsonl line 2: missing 'output'"),
    ('{"messages": [{"role": "user", "content": "q"}]}\n', {}, "bad.jsonl line 1: no assistant message"),
    ("", {}, "bad.jsonl holds no samples"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n',
     {"cutoff": 8, "over_cutoff": "drop"}, "all 1 samples are longer than the cutoff of 8 tokens"),
])
def test_bad_data_is_refused_before_any_step(env, tmp_path, lines, settings, expected):
    app, job, _ = env
    bad = tmp_path / "training" / "bad.jsonl"
    bad.write_text(lines)
    with pytest.raises(DataError) as caught:
        job.plan(TrainingSettings(output="x", **FAST, **settings), dataset=bad)
    assert expected in str(caught.value)
    assert nothing_written(tmp_path) and job.progress().state == "idle"


def test_gguf_and_remote_models_cannot_be_trained(make_app, models_dir, tmp_path):
    import http.server

    from tests.gguf_writer import write_gguf

    folder = tmp_path / "gguf"
    folder.mkdir()
    write_gguf(models_dir / "parlour-micro", folder / "micro.f32.gguf")
    app = make_app(models_dir=folder, loras_dir=tmp_path / "loras")
    job = TrainingManager(app.models, tmp_path / "loras", tmp_path / "runs")
    data = write_jsonl(tmp_path / "training" / "qa.jsonl", chat_lines(4))
    app.models.load("micro.f32.gguf", options={"n_ctx": 256})
    with pytest.raises(TrainingError, match=r"micro.f32.gguf is a GGUF model \(llama.cpp\): GGUF weights cannot be "
                                            "trained; load the model's Transformers folder"):
        job.plan(TrainingSettings(output="x", cutoff=64), dataset=data)

    class Engine(http.server.BaseHTTPRequestHandler):  # just enough of an OpenAI server to be loaded
        def do_GET(self):
            body = json.dumps({"data": [{"id": "big-model", "max_model_len": 4096}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    engine = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Engine)
    threading.Thread(target=engine.serve_forever, daemon=True).start()
    try:
        app.models.load("remote:big-model", "remote", {"base_url": f"http://127.0.0.1:{engine.server_port}/v1"})
        with pytest.raises(TrainingError, match="remote:big-model runs on a remote engine: only a model loaded here"):
            job.plan(TrainingSettings(output="x", cutoff=64), dataset=data)
    finally:
        engine.shutdown()
    assert nothing_written(tmp_path)


def test_resume_refuses_changed_data(env, tmp_path):
    app, job, data = env

    def stop_at_two(progress):
        if progress.step == 2:
            job.stop()

    assert job.run(job.plan(TrainingSettings(output="r", max_steps=6, **FAST), dataset=data), (stop_at_two,)).state \
        == "stopped"
    write_jsonl(data, chat_lines(16, answer="Something else."))
    with pytest.raises(TrainingError, match="qa.jsonl changed since run r started"):
        job.plan_resume("r")
    with pytest.raises(TrainingError, match="a stopped run named r exists .*: Resume it"):
        job.plan(TrainingSettings(output="r", **FAST), dataset=data)


def test_text_files_saved_chats_and_gradient_checkpointing_train(env, tmp_path):
    app, job, _ = env
    text = tmp_path / "training" / "notes.txt"
    text.write_text("The sea is wide and the sea is deep. " * 40)
    plan = job.plan(TrainingSettings(output="notes", max_steps=2, cutoff=64, text_stride=32,
                                     gradient_checkpointing=True, **FAST), dataset=text)
    assert all(s.labels == s.input_ids for s in plan.train) and len(plan.train) > 3
    assert job.run(plan).state == "done"
    assert not app.models.current().model.is_activation_checkpointing  # switched off again afterwards

    chat = app.store.create_chat("ann", title="Bees")
    app.store.add_message("ann", chat, "user", QUESTION)
    app.store.add_message("ann", chat, "assistant", "Bees make honey.")
    plan = job.plan(TrainingSettings(output="from-chats", max_steps=2, **FAST), chats=[chat], user="ann")
    assert plan.train[0].source == f"chat {chat} ('Bees')" and plan.train[0].trained > 0
    final = job.run(plan)
    assert final.state == "done"
    card = json.loads((tmp_path / "loras" / "from-chats" / "parlour-training.json").read_text())
    assert card["data"]["name"] == "saved chats" and card["data"]["chats"] == [chat]
