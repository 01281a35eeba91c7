"""Extensions in headless Chromium: their JS and CSS run, their tab shows, the Session tab shows failures."""

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "extensions"


def test_extension_page_parts_and_session_status(browser, start_server, models_dir, tmp_path):
    shutil.copytree(FIXTURES / "tgw_recorder", tmp_path / "user_data" / "extensions" / "tgw_recorder")
    broken = tmp_path / "user_data" / "extensions" / "broken_setup"
    broken.mkdir()
    (broken / "script.py").write_text("def setup():\n    raise RuntimeError('cannot start')\n")
    server = start_server("--models-dir", str(models_dir), "--model", "parlour-micro",
                          "--extensions", "tgw_recorder", "broken_setup")
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_function("() => window.tgwRecorderLoaded === true")          # custom_js ran
    page.get_by_role("tab", name="TGW recorder").click()                     # is_tab: its own tab
    page.wait_for_selector("#tgw-recorder-ui")
    color = page.eval_on_selector("#tgw-recorder-ui", "e => getComputedStyle(e).color")
    assert color == "rgb(102, 51, 153)"                                       # custom_css: rebeccapurple
    page.get_by_role("tab", name="Session").click()
    page.wait_for_function("() => document.querySelector('#session-extensions-status').innerText"
                           ".includes('cannot start')")
    status = page.inner_text("#session-extensions-status")
    assert "tgw_recorder" in status and "broken_setup" in status
    page.close()
