"""The Training tab in headless Chromium against a real server: upload a JSONL, preview it, Start, the loss
plot gets a point per step and the eval-perplexity plot appears, and the adapter is in the Model tab's LoRA
list."""

import pytest

from tests.training_data import chat_lines, write_jsonl

pytestmark = pytest.mark.browser

# points on each line of the loss plot (training loss, eval loss)
LINE_POINTS = ("() => [...document.querySelectorAll('#train-loss-plot g.mark-line path')]"
               ".map(p => (p.getAttribute('d') || '').split('L').length)")


def test_upload_start_plot_and_the_adapter_in_the_lora_list(browser, start_server, models_dir, tmp_path):
    server = start_server("--models-dir", str(models_dir), "--model", "parlour-micro",
                          "--loras-dir", str(tmp_path / "loras"))
    data = write_jsonl(tmp_path / "upload" / "secret.jsonl", chat_lines(8))
    page = browser.new_page()
    page.goto(server.url)
    page.get_by_role("tab", name="Training").click()
    # the Settings open first: their fields mount while the upload runs (a field filled in the instant the
    # accordion opened once kept its default under CI load: the run trained 6 steps, not 12)
    page.click("#train-settings button")
    page.wait_for_selector("#train-max-steps input", state="visible")
    page.set_input_files("#train-upload input[type=file]", str(data))
    page.wait_for_function("() => document.querySelector('#train-status').innerText.includes('Saved secret.jsonl')")
    assert (tmp_path / "user_data" / "training" / "secret.jsonl").read_bytes() == data.read_bytes()
    page.fill("#train-output textarea", "browser-lora")
    page.fill("#train-max-steps input", "12")
    page.fill("#train-learning-rate input", "0.01")
    page.fill("#train-threads input", "1")
    page.fill("#train-eval-split input", "0.25")
    page.click("#train-preview-button")
    page.wait_for_selector("#train-preview .train-sample")
    previewed = page.inner_text("#train-status")  # what the server read from the fields
    assert "8 samples" in previewed and "2 held out" in previewed and "12 steps" in previewed
    trained = page.locator("#train-preview .train-trained").first.inner_text()
    assert trained.startswith("Bees make honey.")  # the reply is trained; the greyed question is not
    assert "What is the secret word?" in page.locator("#train-preview .train-masked").first.inner_text()

    page.click("#train-start")
    page.wait_for_function(f"() => ({LINE_POINTS})().some(n => n >= 2)")  # a line (polled while it trains)
    page.wait_for_function("() => document.querySelector('#train-status').innerText.includes('done')")
    assert "saved loras/browser-lora after 12 steps" in page.inner_text("#train-status")
    page.wait_for_function(f"() => ({LINE_POINTS})().includes(12)")  # the training loss: a point per step
    page.wait_for_selector("#train-ppl-plot g.mark-line path")  # eval perplexity, shown with an eval split
    assert "perplexity" in page.inner_text("#train-status")
    assert (tmp_path / "loras" / "browser-lora" / "adapter_model.safetensors").is_file()

    page.get_by_role("tab", name="Model").click()
    page.click("#model-refresh")
    page.get_by_text("LoRA adapters").click()
    page.click("#lora-dropdown input")
    page.get_by_role("option", name="browser-lora").wait_for()  # listed, after 🔄 Refresh
    page.close()
