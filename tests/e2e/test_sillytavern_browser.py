"""A real, unmodified SillyTavern (from the npm registry, see tests/sillytavern.py) driven in Chromium
against a Parlour server on the micro model: "Text Completion -> Text Generation WebUI" chats, streams,
stops, swipes and shows token probabilities; "Chat Completion -> Custom (OpenAI-compatible)" chats; a
character card with every field goes Parlour -> SillyTavern -> Parlour and keeps them all.
Every request stays on 127.0.0.1 (the page's others are refused and counted)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import micro_server
from tests.e2e.test_chat_browser import IDLE, bots, info, open_page
from tests.sillytavern import SillyTavern, install

pytestmark = [pytest.mark.browser, pytest.mark.timeout(1800)]
MODEL = "parlour-micro"
LOAD_MS = 600_000  # SillyTavern's first page load on a busy 2-core machine
REPLY_MS = 300_000


@pytest.fixture(scope="module")
def parlour(tmp_path_factory, models_dir):
    tmp = tmp_path_factory.mktemp("parlour-for-st")
    characters = tmp / "characters"  # imported cards go here, not into the repository's characters/
    shutil.copytree(Path(__file__).resolve().parents[2] / "characters", characters)
    server = micro_server(tmp, models_dir, "--characters-dir", str(characters))
    server.characters = characters
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


# -- character cards: Parlour -> SillyTavern -> Parlour ---------------------------------------------
CARD_NAME = "Mara Vell"
EDITED_SCENARIO = "{{user}} rows out to the lighthouse at dusk."  # typed into Parlour's Character tab
#: a lorebook as SillyTavern writes one: every entry field it uses, V2's and those under `extensions`
BOOK = {
    "name": "Vell coast", "description": "The coast around the lighthouse.", "scan_depth": 3, "token_budget": 400,
    "recursive_scanning": False, "extensions": {},
    "entries": [
        {"id": 0, "keys": ["lighthouse"], "secondary_keys": ["storm"], "selective": True, "constant": False,
         "enabled": True, "insertion_order": 10, "position": "before_char", "case_sensitive": False,
         "name": "tower", "comment": "tower", "priority": 10, "use_regex": True,
         "content": "LORE-TOWER: the lighthouse lamp has burned for ninety years.",
         "extensions": {"position": 0, "depth": 4, "selectiveLogic": 0, "scan_depth": 2, "probability": 100,
                        "useProbability": True, "match_whole_words": True, "case_sensitive": False,
                        "exclude_recursion": False, "prevent_recursion": False, "group": "", "role": 0,
                        "sticky": 0, "cooldown": 0, "delay": 0, "display_index": 0}},
        {"id": 1, "keys": ["lighthouse"], "secondary_keys": ["dragon"], "selective": True, "constant": False,
         "enabled": True, "insertion_order": 15, "position": "before_char",
         "content": "LORE-DRAGON: no dragon was ever seen here.",  # its secondary key is not in the chat
         "extensions": {"position": 0, "selectiveLogic": 0, "display_index": 1}},
        {"id": 2, "keys": [], "secondary_keys": [], "selective": False, "constant": True, "enabled": True,
         "insertion_order": 20, "position": "after_char",
         "content": "LORE-ALWAYS: Mara keeps a logbook of every ship.",
         "extensions": {"position": 1, "display_index": 2}},
        {"id": 3, "keys": ["harbour", "harbor"], "secondary_keys": [], "selective": False, "constant": False,
         "enabled": True, "insertion_order": 30, "position": "after_char",
         "content": "LORE-HARBOUR: the harbour freezes in winter.",
         "extensions": {"position": 4, "depth": 0, "role": 0, "display_index": 3}},  # @ depth 0: in the chat
        {"id": 4, "keys": ["kraken"], "secondary_keys": [], "selective": False, "constant": False, "enabled": True,
         "insertion_order": 40, "position": "before_char", "content": "LORE-KRAKEN: a kraken sleeps offshore.",
         "extensions": {"position": 0, "display_index": 4}},
    ],
}
#: the card's `data`, as SillyTavern writes a V2/V3 card (its V3-only fields too)
CARD = {
    "name": CARD_NAME,
    "description": "Mara Vell keeps the lighthouse on the Vell coast.",
    "personality": "patient, dry, watchful",
    "scenario": "{{user}} knocks at the lighthouse door.",
    "first_mes": "*Mara lowers the lamp.* Another storm, {{user}}.",
    "alternate_greetings": ["*The stairs creak.* You climbed all the way up, {{user}}?",
                            "Tea's on the stove, {{user}}. Sit."],
    "mes_example": "<START>\n{{user}}: Is it safe?\n{{char}}: Nothing on this coast is.",
    "system_prompt": "You are {{char}}; stay in character. {{original}}",
    "post_history_instructions": "[POST-HISTORY: answer in two sentences.]",
    "creator_notes": "Best with the lorebook; try asking about the harbour.",
    "tags": ["lighthouse", "slice of life", "coast"],
    "creator": "parlour-tests",
    "character_version": "2.1",
    "extensions": {"talkativeness": "0.6", "world": "Vell coast", "custom_tool": {"kept": [1, 2]},
                   "depth_prompt": {"prompt": "Mara is tired.", "depth": 4, "role": "system"}},
    "character_book": BOOK,
    "group_only_greetings": ["Mara nods to the group."],
    "nickname": "Keeper",
    "creator_notes_multilingual": {"fr": "Avec le lorebook."},
    "source": ["https://example.invalid/mara"],
    "creation_date": 1700000000,
    "modification_date": 1700000500,
}
EXPECTED = {**CARD, "scenario": EDITED_SCENARIO}


def avatar_png() -> bytes:
    """A small non-square picture whose pixels all differ, so a crop, a resize or a lost picture shows."""
    from PIL import Image

    image = Image.new("RGBA", (48, 64))
    image.putdata([(x * 5, y * 4, (x * 7 + y * 3) % 256, 255 - x) for y in range(64) for x in range(48)])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def pixels(png: bytes) -> tuple[tuple[int, int], bytes]:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return image.size, image.convert("RGBA").tobytes()


def source_card() -> bytes:
    """The card as SillyTavern exports one: the V2 JSON in a `chara` chunk, the same as V3 in `ccv3`."""
    from modules.characters import png_with_texts

    v2 = {"spec": "chara_card_v2", "spec_version": "2.0", "data": CARD}
    v3 = {"spec": "chara_card_v3", "spec_version": "3.0", "data": CARD}
    return png_with_texts(avatar_png(), {"chara": base64.b64encode(json.dumps(v2).encode()),
                                         "ccv3": base64.b64encode(json.dumps(v3).encode())})


def card_chunks(png: bytes) -> dict[str, dict]:
    """The card JSON in each of a PNG's card chunks ({'chara': ..., 'ccv3': ...})."""
    from modules.characters import png_text_chunks

    texts = {k.lower(): v for k, v in png_text_chunks(png).items()}
    return {k: json.loads(base64.b64decode(texts[k])) for k in ("chara", "ccv3") if k in texts}


def assert_card_data(data: dict, where: str) -> None:
    """Every field of EXPECTED is in a card's `data` as it was; extensions may gain keys (Parlour's
    folded context, SillyTavern's `fav`) but lose none."""
    for key, value in EXPECTED.items():
        if key == "extensions":
            assert {k: data[key].get(k) for k in value} == value, where
        else:
            assert data.get(key) == value, (where, key)


class TavernAPI:
    """SillyTavern's own HTTP API, called the way its page calls it: a session cookie and the CSRF token
    from GET /csrf-token in an X-CSRF-Token header; character files are named by their `avatar`."""

    def __init__(self, st: SillyTavern) -> None:
        self.http = httpx.Client(base_url=st.url, timeout=120)
        token = self.http.get("/csrf-token").raise_for_status().json()["token"]
        self.http.headers["X-CSRF-Token"] = token

    def import_png(self, card: bytes, filename: str) -> str:
        """Import a PNG card as the character list's Import button does; the new character's avatar file."""
        response = self.http.post("/api/characters/import", data={"file_type": "png"},
                                  files={"avatar": (filename, card, "image/png")}).raise_for_status()
        body = response.json()
        assert "file_name" in body, body  # SillyTavern answers {"error": true} when it could not read the card
        return body["file_name"] + ".png"

    def character(self, avatar: str) -> dict:
        return self.http.post("/api/characters/get", json={"avatar_url": avatar}).raise_for_status().json()

    def export(self, avatar: str, kind: str = "png") -> bytes:
        return self.http.post("/api/characters/export",
                              json={"avatar_url": avatar, "format": kind}).raise_for_status().content

    def close(self) -> None:
        self.http.close()


def prompt_preview(page, text: str) -> str:
    """The prompt Parlour would send for `text` as the next message (Prompt settings -> Show prompt)."""
    page.fill("#chat-input textarea", text)
    page.click("#show-prompt")
    page.wait_for_function("(t) => document.querySelector('#prompt-preview').innerText.includes(t)", arg=text)
    return page.inner_text("#prompt-preview")


def test_character_card_with_every_field_round_trips_through_sillytavern(browser, parlour, sillytavern, tmp_path):
    from modules.characters import CharacterStore

    store = CharacterStore(parlour.characters)
    source = tmp_path / "mara.png"
    source.write_bytes(source_card())
    page = open_page(browser, parlour.url)

    # 1. In Parlour: import the card, change its scenario in the Character tab, export it (Chat tab)
    page.get_by_text("Character cards and chat files").click()
    page.set_input_files("#card-import input[type=file]", str(source))
    page.wait_for_function("(n) => document.querySelector('#character input').value === n", arg=CARD_NAME)
    page.get_by_role("tab", name="Character", exact=True).click()
    page.wait_for_function("([n, s]) => document.querySelector('#char-name textarea, #char-name input').value === n"
                           " && document.querySelector('#char-scenario textarea').value === s",
                           arg=[CARD_NAME, CARD["scenario"]])
    page.fill("#char-scenario textarea", EDITED_SCENARIO)
    page.click("#char-save")
    page.wait_for_function("() => document.querySelector('#char-status').innerText.includes('Saved')")
    page.get_by_role("tab", name="Chat", exact=True).click()
    page.click("#export-card")
    link = page.wait_for_selector("#download a[href]")
    exported = page.request.get(link.get_attribute("href")).body()
    chunks = card_chunks(exported)
    assert chunks["chara"]["spec"] == "chara_card_v2" and chunks["ccv3"]["spec"] == "chara_card_v3"
    for name, card in chunks.items():
        assert_card_data(card["data"], f"Parlour's export, {name}")
    assert pixels(exported) == pixels(avatar_png())

    # 2. SillyTavern imports it (its character list's Import) and keeps every field, as it stores them
    tavern = TavernAPI(sillytavern)
    try:
        avatar = tavern.import_png(exported, f"{CARD_NAME}.png")
        stored = tavern.character(avatar)
        assert_card_data(stored["data"], "SillyTavern's character")
        # the V1 fields SillyTavern's own screens read, mirrored from the card's data
        for key in ("name", "description", "personality", "first_mes", "mes_example", "tags"):
            assert stored[key] == EXPECTED[key], key
        assert stored["scenario"] == EDITED_SCENARIO
        assert [e["keys"] for e in stored["data"]["character_book"]["entries"]] == [e["keys"] for e in BOOK["entries"]]
        # 3. ... and exports it, its picture re-encoded by SillyTavern but the same pixels
        back = tavern.export(avatar, "png")
        as_json = json.loads(tavern.export(avatar, "json"))
    finally:
        tavern.close()
    for name, card in card_chunks(back).items():
        assert_card_data(card["data"], f"SillyTavern's export, {name}")
    assert_card_data(as_json["data"], "SillyTavern's JSON export")
    assert pixels(back) == pixels(avatar_png())

    # 4. Parlour imports SillyTavern's card; the name is taken, so it asks, and the user overwrites
    returned = tmp_path / "from-sillytavern.png"
    returned.write_bytes(back)
    page.wait_for_selector("#card-import input[type=file]", state="attached")
    page.set_input_files("#card-import input[type=file]", str(returned))
    page.wait_for_selector("#card-conflict", state="visible")
    # the question replaces the first import's "Imported character" line, so the wait below is for this one
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('already exists')")
    page.click("#card-overwrite")
    page.wait_for_function("(n) => document.querySelector('#chat-status').innerText.includes('Imported character')"
                           " && document.querySelector('#character input').value === n", arg=CARD_NAME)
    character = store.load(CARD_NAME)
    assert store.picture(CARD_NAME).read_bytes() == back  # the card that came back, not the one sent
    fields: dict[str, Any] = {
        "name": character.name, "description": character.description, "personality": character.personality,
        "scenario": character.scenario, "first_mes": character.greeting,
        "alternate_greetings": character.alternate_greetings, "mes_example": character.mes_example,
        "system_prompt": character.system_prompt, "post_history_instructions": character.post_history_instructions,
        "creator_notes": character.creator_notes, "tags": character.tags, "creator": character.creator,
        "character_version": character.character_version, "extensions": character.extensions,
        "character_book": character.character_book, **character.card_extra}
    assert_card_data(fields, "Parlour's character from SillyTavern's card")

    # ... and uses them: the greetings are one reply's versions, the book and post-history instructions
    # go into the prompt (keys with their secondary key, a constant entry, one at depth 0; not those whose
    # keys are absent or whose secondary key is), around the character's context; the Character's Note
    # (depth 4, deeper than this chat's two messages) in front of the oldest message
    page.click("#new-chat")
    page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=bot]').length === 1")
    page.wait_for_function(IDLE)
    assert "Another storm" in bots(page)[0] and "version 1/3" in info(page)
    page.get_by_text("Prompt settings").click()
    prompt = prompt_preview(page, "Is the lighthouse safe in a storm? And the harbour?")
    for text in ("LORE-TOWER", "LORE-ALWAYS", "LORE-HARBOUR", "POST-HISTORY", "Mara is tired."):
        assert prompt.count(text) == 1, (text, prompt)
    assert "LORE-DRAGON" not in prompt and "LORE-KRAKEN" not in prompt
    # the card's system prompt leads the context, without SillyTavern's {{original}} (the prompt it overrides)
    assert "You are Mara Vell; stay in character." in prompt and "{{original}}" not in prompt
    at = {text: prompt.index(text) for text in
          ("LORE-TOWER", CARD["description"], "LORE-ALWAYS", "Mara is tired.", "Another storm",
           "Is the lighthouse safe", "LORE-HARBOUR", "POST-HISTORY")}
    assert list(at.values()) == sorted(at.values()), (at, prompt)
    page.close()
