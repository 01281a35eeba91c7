"""Tools in a real browser: the demo model forced to call the calculator (the call block and its result in
the bubble, and again after a reload); the Session tab's MCP servers are managed by admins only (another
login sees them, may tick their tools, and is refused when it tries to change them; mcp.json is never written)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from modules.tools.builtin import calculate
from tests.conftest import DEMO_DIR
from tests.e2e.test_chat_browser import IDLE, login

pytestmark = [pytest.mark.browser]
ROOT = Path(__file__).resolve().parents[2]
MCP_SERVER = ROOT / "tests" / "mcp_server.py"
TABLE = "#session-mcp-servers"
BLOCK = "#chatbot [data-testid=bot] details.tool-call"


# The two tool-call tests share one server on the demo model (a server start is ~15 s of CPU): each logs in
# as its own user, so each starts on an empty chat list whatever ran before it.
USERS = ("calc", "shouter")
SHOUT = """tool = {'type': 'function', 'function': {'name': 'shout', 'description': 'Upper-case a text',
        'parameters': {'type': 'object', 'properties': {'text': {'type': 'string', 'maxLength': 20}},
                       'required': ['text']}}}
def execute(arguments):
    return 'SHOUTED ' + arguments['text'].upper()
"""


@pytest.fixture(scope="module")
def demo_server(module_server, tmp_path_factory):
    """The demo model, greedy, with a user tool file (shout.py)."""
    assert (DEMO_DIR / "config.json").exists(), "the demo model is missing: ./test.sh builds it"
    presets = tmp_path_factory.mktemp("presets")
    (presets / "Greedy.yaml").write_text("temperature: 0\nmax_new_tokens: 60\n")

    def user_tool(user_data: Path) -> None:
        (user_data / "tools").mkdir()
        (user_data / "tools" / "shout.py").write_text(SHOUT)

    return module_server("--presets-dir", str(presets), "--preset", "Greedy",
                         "--auth", ",".join(f"{user}:pw-{user}" for user in USERS),
                         models=DEMO_DIR.parent, model="parlour-demo", prepare=user_tool)


def own_page(browser, server, user: str):
    assert user in USERS
    return login(browser, server.url, user, f"pw-{user}")


def test_a_forced_calculator_call_shows_its_block_and_result_and_comes_back(browser, demo_server):
    server = demo_server
    page = own_page(browser, server, "calc")
    page.wait_for_selector("#chat-thinking", state="visible")
    page.locator("#chat-thinking input").uncheck()
    page.get_by_text("Tools", exact=True).click()
    page.locator("#chat-tools-list").get_by_text("calculator (built-in)").click()
    page.click("#chat-tool-choice input")
    page.get_by_role("option", name="required", exact=True).click()
    before = server.health()["requests"]
    page.fill("#chat-input textarea", "What is 19 + 23?")
    page.click("#send")
    # the forced call, then the model's reply after reading the result: two generations
    server.wait_until(lambda h: h["requests"] >= before + 2 and h["active"] == 0)
    page.wait_for_function(IDLE)
    page.wait_for_selector(BLOCK)

    def shown() -> tuple[str, str, str]:
        block = page.locator(BLOCK).first
        text = lambda sel: block.locator(sel).evaluate("el => el.textContent")  # noqa: E731 (closed blocks too)
        return text("summary"), text(".tool-arguments"), text(".tool-result")

    title, arguments, result = shown()
    assert title.startswith("🔧 calculator") and title.endswith(" s")
    # the model wrote the arguments under the tool's schema; the result is the calculator's answer to them
    assert result == str(calculate(json.loads(arguments)["expression"]))
    assert page.locator(BLOCK).first.evaluate("el => el.open") is False  # collapsed; the user can open it
    page.locator(BLOCK).first.locator("summary").click()
    assert page.locator(BLOCK).first.evaluate("el => el.open") is True

    # reopened from the store: the same call and result, and the chat's tools still ticked
    page.reload()
    page.wait_for_selector(BLOCK)
    page.wait_for_function(IDLE)
    assert shown() == (title, arguments, result)
    page.get_by_text("Tools", exact=True).click()
    assert page.locator("#chat-tools-list").get_by_label("calculator (built-in)").is_checked()
    assert page.locator("#chat-tool-choice input").input_value() == "required"


def test_a_user_tool_waits_for_approval_then_runs(browser, demo_server):
    server = demo_server  # its user_data/tools has shout.py
    page = own_page(browser, server, "shouter")
    page.wait_for_selector("#chat-thinking", state="visible")
    page.locator("#chat-thinking input").uncheck()
    page.get_by_text("Tools", exact=True).click()
    page.locator("#chat-tools-list").get_by_text("shout (file shout.py)").click()
    page.click("#chat-tool-choice input")
    page.get_by_role("option", name="required", exact=True).click()
    before = server.health()["requests"]
    page.fill("#chat-input textarea", "Shout hello")
    page.click("#send")
    server.wait_until(lambda h: h["requests"] >= before + 1 and h["active"] == 0)
    # the reply stops at the call: the block says it has not run, the row asks
    page.wait_for_selector("#tool-confirm", state="visible")
    assert "shout" in page.inner_text("#tool-confirm-question")
    assert page.locator(BLOCK).first.locator("summary").inner_text().startswith("⏳ shout")
    assert server.health()["requests"] == before + 1
    page.click("#tool-approve")
    server.wait_until(lambda h: h["requests"] >= before + 2 and h["active"] == 0)  # the model read the result
    page.wait_for_function(IDLE)
    page.wait_for_selector("#tool-confirm", state="hidden")
    block = page.locator(BLOCK).first
    assert block.locator("summary").evaluate("el => el.textContent").startswith("🔧 shout")
    arguments = json.loads(block.locator(".tool-arguments").evaluate("el => el.textContent"))
    assert block.locator(".tool-result").evaluate("el => el.textContent") == "SHOUTED " + arguments["text"].upper()


def write_mcp_json(user_data: Path) -> str:
    user_data.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"mcpServers": {"test": {"command": sys.executable, "args": [str(MCP_SERVER), "stdio"]}}})
    (user_data / "mcp.json").write_text(text)
    return text


def open_session_tab(page) -> None:
    page.get_by_role("tab", name="Session").click()
    # the servers start in the background; the table follows them (a timer), so wait for the state
    page.wait_for_function("(sel) => (document.querySelector(sel) || {}).innerText?.includes('ready')", arg=TABLE,
                           timeout=180_000)


def test_only_admins_manage_mcp_servers(browser, start_server, models_dir, tmp_path):
    config = write_mcp_json(tmp_path / "user_data")
    server = start_server("--models-dir", str(models_dir), "--model", "parlour-micro",
                          "--auth", "ann:pw-ann,bob:pw-bob", "--admin-users", "ann")
    ann = login(browser, server.url, "ann", "pw-ann")
    bob = login(browser, server.url, "bob", "pw-bob")
    for page in (ann, bob):
        open_session_tab(page)
    # the admin sees where a server comes from; the other login only its name, state and tools
    assert "mcp_server.py" in ann.locator(TABLE).inner_text()
    bob_table = bob.locator(TABLE).inner_text()
    assert "add" in bob_table and "mcp_server.py" not in bob_table and sys.executable not in bob_table

    bob.get_by_text("Manage (admins)").click()
    bob.fill("#session-mcp-name textarea, #session-mcp-name input", "evil")
    bob.fill("#session-mcp-url textarea, #session-mcp-url input", "http://127.0.0.1:9/mcp")
    bob.click("#session-mcp-add")
    bob.wait_for_function("() => document.querySelector('#session-mcp-result').innerText.includes('Only admins')")
    bob.click("#session-tools-reload")
    bob.wait_for_function("() => document.querySelector('#session-mcp-result').innerText.includes('Only admins')")
    assert not (tmp_path / "user_data" / "mcp_http.json").exists()
    assert (tmp_path / "user_data" / "mcp.json").read_text() == config
    # nor may he turn extensions on or off: they run code, for every user of the server
    checked = "() => [...document.querySelectorAll('#session-extensions input')].map((e) => e.checked).join()"
    before = bob.evaluate(checked)
    bob.locator("#session-extensions label").first.click()
    assert bob.evaluate(checked) != before
    bob.click("#session-extensions-apply")
    bob.wait_for_function("() => document.querySelector('#session-extensions-result').innerText.includes('Only admins')")
    bob.wait_for_function(f"() => ({checked})() === {json.dumps(before)}")  # the box shows what is really on
    ann.reload()
    open_session_tab(ann)
    assert ann.evaluate(checked) == before

    # bob may tick the operator's tools in his chats: the MCP tool is in his checklist
    bob.get_by_role("tab", name="Chat").click()
    bob.get_by_text("Tools", exact=True).click()
    bob.click("#chat-tools-refresh")
    bob.wait_for_function("() => document.querySelector('#chat-tools-list').innerText.includes('test.add (MCP test)')")
    assert "calculator (built-in)" in bob.locator("#chat-tools-list").inner_text()
