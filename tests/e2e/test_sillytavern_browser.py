"""A real, unmodified SillyTavern (from the npm registry, see tests/sillytavern.py) driven in Chromium
against a Parlour server on the micro model: "Text Completion -> Text Generation WebUI" chats, streams,
stops, swipes and shows token probabilities; "Chat Completion -> Custom (OpenAI-compatible)" chats.
Every request stays on 127.0.0.1 (the page's others are refused and counted)."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from tests.conftest import micro_server
from tests.sillytavern import SillyTavern, install

pytestmark = [pytest.mark.browser, pytest.mark.timeout(1800)]
MODEL = "parlour-micro"
LOAD_MS = 600_000  # SillyTavern's first page load on a busy 2-core machine
REPLY_MS = 300_000


@pytest.fixture(scope="module")
def parlour(tmp_path_factory, models_dir):
    server = micro_server(tmp_path_factory.mktemp("parlour-for-st"), models_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sillytavern(tmp_path_factory):
    with SillyTavern(tmp_path_factory.mktemp("sillytavern"), install()) as st:
        yield st


def counters(parlour) -> dict:
    """Parlour's own counters (requests, tokens, API disconnects) from /v1/internal/health."""
    with urllib.request.urlopen(parlour.url + "/v1/internal/health", timeout=10) as response:
        return json.loads(response.read())


def wait_counters(parlour, predicate, timeout: float = REPLY_MS / 1000) -> dict:
    """Poll Parlour's counters until `predicate` holds (its state, not a sleep standing in for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = counters(parlour)
        if predicate(now):
            return now
        time.sleep(0.1)
    raise TimeoutError(f"Parlour's counters never matched: {counters(parlour)}")


class Tavern:
    """SillyTavern's page, with the few steps a user takes in it."""

    def __init__(self, page, st) -> None:
        self.page = page
        self.outside: list[str] = []
        self.generations: list[dict] = []  # the bodies the page sent to SillyTavern's generate routes
        page.route("**/*", self._only_loopback)
        page.on("request", self._record)
        settings = st.data / "default-user" / "settings.json"
        first_run = not settings.is_file() or json.loads(settings.read_text()).get("firstRun", False)
        page.goto(st.url)
        page.wait_for_selector("#preloader", state="detached", timeout=LOAD_MS)
        if first_run:  # SillyTavern's welcome popup (language, your name) comes once the page is up
            page.locator(".popup-button-ok:visible").first.click(timeout=LOAD_MS)

    def _only_loopback(self, route) -> None:
        if route.request.url.startswith("http://127.0.0.1"):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def _record(self, request) -> None:
        if request.url.endswith("/generate") and request.post_data:
            self.generations.append(json.loads(request.post_data))

    def drawer(self, name: str) -> None:
        self.page.click(f"#{name} .drawer-toggle")

    def last_message(self) -> dict:
        """The last chat message as SillyTavern keeps it (its text, swipes, id), from its own context API."""
        return self.page.evaluate("() => { const c = SillyTavern.getContext(); const m = c.chat[c.chat.length - 1];"
                                  " return {mes: m.mes, is_user: m.is_user, swipes: (m.swipes || []).length}; }")

    def wait_idle(self) -> None:
        self.page.wait_for_selector("#mes_stop", state="hidden", timeout=REPLY_MS)

    def send(self, text: str, stop_early: bool = False) -> None:
        self.page.fill("#send_textarea", text)
        self.page.click("#send_but")
        # our message, a reply after it (sending from the welcome page starts a fresh chat first), then
        # the reply's first streamed text
        self.page.wait_for_function("(text) => { const c = SillyTavern.getContext().chat;"
                                    " const i = c.findLastIndex(m => m.is_user && m.mes === text);"
                                    " return i >= 0 && i === c.length - 2; }", arg=text, timeout=REPLY_MS)
        self.page.wait_for_function("() => { const m = document.querySelector('#chat .last_mes');"
                                    " return m && m.getAttribute('is_user') === 'false'"
                                    " && m.querySelector('.mes_text').innerText.trim().length > 0; }",
                                    timeout=REPLY_MS)
        if stop_early:
            self.page.click("#mes_stop")
        self.wait_idle()


def connect_text_generation_webui(tavern: Tavern, parlour, max_tokens: int) -> None:
    page = tavern.page
    tavern.drawer("sys-settings-button")  # API Connections
    page.select_option("#main_api", "textgenerationwebui")  # Text Completion
    page.select_option("#textgen_type", "ooba")  # Text Generation WebUI (oobabooga)
    page.fill("#textgenerationwebui_api_url_text", parlour.url)
    page.click("#api_button_textgenerationwebui")
    page.wait_for_selector(f"#textgenerationwebui_api .online_status_text:has-text('{MODEL}')", timeout=REPLY_MS)
    tavern.drawer("sys-settings-button")
    set_text_completion_length(tavern, max_tokens)
    tavern.drawer("user-settings-button")
    page.check("#request_token_probabilities")
    tavern.drawer("user-settings-button")


def set_text_completion_length(tavern: Tavern, max_tokens: int) -> None:
    """Streaming on, greedy without penalties, and replies that run to `max_tokens` (EOS banned: Stop
    always has a reply to stop)."""
    page = tavern.page
    tavern.drawer("ai-config-button")  # AI Response Configuration
    page.check("#streaming_textgenerationwebui")
    page.check("#ban_eos_token_textgenerationwebui")
    for counter, value in (("#amount_gen_counter", max_tokens), ("#temp_counter_textgenerationwebui", 0),
                           ("#rep_pen_counter_textgenerationwebui", 1)):
        page.fill(counter, str(value))
        page.press(counter, "Enter")
    tavern.drawer("ai-config-button")


def panel_text(tavern: Tavern) -> str:
    """The Token Probabilities panel's tokens joined, with its marks for space and newline undone."""
    tokens = tavern.page.locator("#logprobs_generation_output .logprobs_output_token").all_text_contents()
    return "".join(tokens).replace("·", " ").replace("↵", "\n")


def test_text_generation_webui_connector_chats_streams_stops_swipes_and_shows_probabilities(
        browser, parlour, sillytavern):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    tavern = Tavern(page, sillytavern)
    connect_text_generation_webui(tavern, parlour, max_tokens=40)
    start = counters(parlour)

    tavern.send("Hello there")
    first = tavern.last_message()
    assert not first["is_user"] and first["mes"].strip()
    body = tavern.generations[-1]
    assert body["api_type"] == "ooba" and body["stream"] is True and body["logprobs"] == 10
    assert isinstance(body["dry_sequence_breakers"], str) and body["custom_token_bans"] == ""  # tgw's forms
    assert body["temperature"] == 0 and body["repetition_penalty"] == 1 and body["ban_eos_token"] is True
    after_first = counters(parlour)
    assert after_first["requests"] == start["requests"] + 1 and after_first["tokens"] == start["tokens"] + 40

    # Token Probabilities: one entry per streamed token, spelling out the reply, each with alternatives
    page.click("#options_button")
    page.click("#option_toggle_logprobs")
    page.wait_for_selector("#logprobs_generation_output .logprobs_output_token", timeout=REPLY_MS)
    assert panel_text(tavern).strip() == first["mes"].strip()
    # Each token's alternatives are those at its own place: decoding greedily without penalties, the token
    # is the model's most likely one there, so SillyTavern marks the first alternative (after the banned
    # EOS) as the one chosen. Logprobs one chunk behind their text (as before) fail this.
    tokens = page.locator("#logprobs_generation_output .logprobs_output_token")
    for k in range(min(8, tokens.count())):
        tokens.nth(k).click()
        candidates = page.locator(".logprobs_top_candidate")
        assert candidates.count() >= 2
        texts = candidates.locator("span:first-child").all_text_contents()
        top = next(i for i, text in enumerate(texts) if not text.startswith("<|"))
        assert "selected" in (candidates.nth(top).get_attribute("class") or ""), (k, texts)

    # swipe: a second version of the reply, generated afresh
    page.click("#chat .last_mes .swipe_right")
    page.wait_for_function("() => document.querySelector('#chat .last_mes .swipes-counter')"
                           ".innerText.replace(/[^0-9/]/g, '') === '2/2'", timeout=REPLY_MS)
    wait_counters(parlour, lambda h: h["requests"] == after_first["requests"] + 1 and h["active"] == 0)
    tavern.wait_idle()
    second = tavern.last_message()
    assert second["swipes"] == 2 and second["mes"].strip()

    # Stop mid-reply: SillyTavern hangs up on the stream before its end; Parlour counts the client that
    # went away, cancels the generation (a reply cut far short of its 1500 tokens: before closing the
    # stream's generators explicitly, the model ran on to the end) and is idle again.
    set_text_completion_length(tavern, 1500)
    before_stop = counters(parlour)
    tavern.send("Tell me more", stop_early=True)
    stopped = wait_counters(parlour, lambda h: h["api_disconnects"] > before_stop["api_disconnects"]
                            and h["active"] == 0 and h["api_running"] == 0)
    assert stopped["requests"] == before_stop["requests"] + 1
    assert stopped["tokens"] - before_stop["tokens"] < 1500
    assert tavern.outside == []
    page.close()


def test_chat_completion_custom_openai_compatible_chats(browser, parlour, sillytavern):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    tavern = Tavern(page, sillytavern)
    tavern.drawer("sys-settings-button")
    page.select_option("#main_api", "openai")  # Chat Completion
    page.select_option("#chat_completion_source", "custom")  # Custom (OpenAI-compatible)
    page.fill("#custom_api_url_text", parlour.url + "/v1")
    page.fill("#custom_model_id", MODEL)
    page.click("#api_button_openai")
    page.wait_for_selector(f"#openai_api .online_status_text:has-text('{MODEL}'),"
                           "#openai_api .online_status_text:has-text('Valid')", timeout=REPLY_MS)
    tavern.drawer("sys-settings-button")
    tavern.drawer("ai-config-button")
    page.check("#stream_toggle")
    page.fill("#openai_max_tokens", "24")
    page.press("#openai_max_tokens", "Enter")
    tavern.drawer("ai-config-button")
    start = counters(parlour)

    tavern.send("Hello there")
    reply = tavern.last_message()
    assert not reply["is_user"] and reply["mes"].strip()
    body = tavern.generations[-1]
    assert body["chat_completion_source"] == "custom" and body["stream"] is True
    assert any(m.get("content") == "Hello there" for m in body["messages"])
    done = counters(parlour)
    assert done["requests"] == start["requests"] + 1 and 0 < done["tokens"] - start["tokens"] <= 24
    assert tavern.outside == []
    page.close()
