"""The Parameters tab and the Notebook's distribution views in a real browser against a real server."""

import shutil

import yaml

from tests.conftest import ROOT


def open_tab(page, name):
    page.get_by_role("tab", name=name).click()


def set_number(page, elem_id, value):
    box = page.locator(f"#{elem_id} input[type='number']")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def assert_no_error_toast(page):
    errors = page.locator("[data-testid='toast-body'].error")
    assert errors.count() == 0, errors.first.inner_text()


def test_slider_save_reload_and_live_chain_view(browser, start_server, models_dir, tmp_path):
    presets = tmp_path / "presets"
    shutil.copytree(ROOT / "presets", presets)
    server = start_server("--models-dir", str(models_dir), "--model", "parlour-micro", "--presets-dir", str(presets))
    page = browser.new_page()
    page.goto(server.url)

    # Notebook: the next-token view fills in, and moving a slider redraws the chain view
    open_tab(page, "Notebook")
    page.locator("#notebook-input textarea").fill("def main():\n    return")
    page.locator("#inspect-next-token").click()
    page.locator("#next-token-table tbody tr").nth(49).wait_for()
    assert_no_error_toast(page)  # the page-load events, queued before this click, answered without error
    assert page.locator("#sampler-chain-view .chain-stage").count() >= 1

    open_tab(page, "Parameters")
    set_number(page, "param-top_k", 3)
    set_number(page, "param-temperature", 0.33)
    open_tab(page, "Notebook")
    page.locator("#sampler-chain-view .chain-stage[data-stage='top_k']").wait_for()
    assert "3 possible" in page.locator("#sampler-chain-view .chain-stage[data-stage='top_k']").inner_text()

    # Save the moved sliders under a new name
    open_tab(page, "Parameters")
    page.locator("#preset-save-name textarea, #preset-save-name input").first.fill("Mine")
    page.locator("#preset-save").click()
    page.get_by_text("Saved preset Mine").wait_for()
    # the page starts from the Default preset (min_p, repetition_penalty) with the two moved sliders
    assert yaml.safe_load((presets / "Mine.yaml").read_text()) == {
        "temperature": 0.33, "top_k": 3, "min_p": 0.05, "repetition_penalty": 1.05}

    # After a reload the preset is in the dropdown and selecting it brings the values back
    page.reload()
    open_tab(page, "Parameters")
    set_number(page, "param-temperature", 1.5)
    page.locator("#preset-dropdown input").click()
    page.get_by_role("option", name="Mine", exact=True).click()
    page.get_by_text("Loaded preset Mine").wait_for()
    assert_no_error_toast(page)
    assert page.locator("#param-temperature input[type='number']").input_value() == "0.33"
    assert page.locator("#param-top_k input[type='number']").input_value() == "3"

    # Remember it for this model; switching models and back selects it again
    page.locator("#preset-model-default").click()
    page.get_by_text("Mine will be selected when parlour-micro loads").wait_for()
    page.locator("#preset-dropdown input").click()
    page.get_by_role("option", name="Top-P", exact=True).click()
    page.get_by_text("Loaded preset Top-P").wait_for()
    open_tab(page, "Model")
    for name in ("parlour-micro-gpt2", "parlour-micro"):
        page.locator("#model-dropdown input").click()
        page.get_by_role("option", name=name, exact=True).click()
        page.locator("#model-load").click()
        page.locator("#model-status").get_by_text(f"{name} (transformers").wait_for()
    open_tab(page, "Parameters")
    page.get_by_text("Loaded preset Mine").wait_for()
    assert page.locator("#param-temperature input[type='number']").input_value() == "0.33"
    assert_no_error_toast(page)
    page.close()
