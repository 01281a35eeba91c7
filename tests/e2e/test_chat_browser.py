"""The chat tab in a real browser against a real server process with the micro model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

pytestmark = pytest.mark.browser

IDLE = "() => !document.querySelector('[data-testid=status-tracker].generating, [data-testid=status-tracker].pending')"
# Any script that runs from chat content trips these traps.
TRAP = """
window.__xss = [];
window.alert = (m) => window.__xss.push(String(m));
window.confirm = window.prompt = window.alert;
"""


@pytest.fixture(scope="module")
def short_presets(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("presets")
    (folder / "Short.yaml").write_text("max_new_tokens: 12\nban_eos_token: true\n")
    (folder / "Long.yaml").write_text("max_new_tokens: 1800\nban_eos_token: true\n")
    return folder


# One server for the tests that need no flags of their own: each logs in as its own user, so each starts
# on an empty chat list, as on a fresh server (a server start is ~15 s of CPU on these machines).
USERS = ("ann", "bob", "regen", "editor", "cont", "remover", "xss", "sidebar", "card")


@pytest.fixture(scope="module")
def characters(tmp_path_factory) -> Path:
    """The module server's characters: a copy of the repository's (imports write here, never into it)."""
    folder = tmp_path_factory.mktemp("characters")
    shutil.copytree(Path(__file__).resolve().parents[2] / "characters", folder, dirs_exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server(module_server, short_presets, characters):
    return module_server("--presets-dir", str(short_presets), "--preset", "Short", "--characters-dir", str(characters),
                         "--auth", ",".join(f"{user}:pw-{user}" for user in USERS))


def own_page(browser, server, user: str):
    """The chat page, logged in as `user` (a user no other test uses)."""
    assert user in USERS
    return login(browser, server.url, user, f"pw-{user}")


def open_page(browser, url, context=None):
    context = context or browser.new_context()
    context.add_init_script(TRAP)
    page = context.new_page()
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.goto(url)
    page.wait_for_selector("#chat-input textarea")
    page.wait_for_function(IDLE)
    return page


def page_loaded(page, server, user: str = "local") -> bool:
    """Wait for the page-load event to have opened the user's newest chat: the chat list drawn (it is empty
    until that event answers) with one chat checked. An idle page alone can come before the event started,
    and a New chat clicked then is drawn over by the newest chat, or lost while the page still mounts (seen
    under CI load: a message meant for a new chat went into the old one). Whether the user has saved chats
    (without any, the page opens on a new chat)."""
    from modules.store import ChatStore

    saved = bool(ChatStore(server.log.parent / "user_data" / "chats.sqlite").list_chats(user))
    if saved:
        page.wait_for_function("() => document.querySelector('#chat-list input:checked')")
    page.wait_for_function(IDLE)
    return saved


def new_chat(page, server, user: str = "local") -> None:
    """A new, empty chat, once the page has loaded. A user without saved chats is on one already: New
    would change nothing the page shows, so nothing could tell when its answer came, and an answer coming
    after the test's next action would draw over it (seen under load: a dummy reply saved, then blanked).
    Otherwise New's chat is in no list until its first message: the list shows none checked once it is
    there."""
    if not page_loaded(page, server, user):
        return
    page.click("#new-chat")
    page.wait_for_function("""() => !document.querySelector('#chat-list input:checked')
        && !document.querySelector('#chatbot [data-testid=user], #chatbot [data-testid=bot]')""")
    page.wait_for_function(IDLE)


# A message's words as shown: its inner text without its action bar (whose version label is text too),
# white space collapsed (the browser's line breaks between paragraphs vary with layout, not content).
WORDS = """(els) => els.map((e) => {
  const bars = [...e.querySelectorAll('.msg-actions, .waiting-indicator')];
  bars.forEach((b) => { b.style.display = 'none'; });
  const text = e.innerText;
  bars.forEach((b) => { b.style.display = ''; });
  return text.replace(/\\s+/g, ' ').trim();
})"""


def bots(page) -> list[str]:
    return page.locator("#chatbot [data-testid=bot] .message-content").evaluate_all(WORDS)


def users(page) -> list[str]:
    return page.locator("#chatbot [data-testid=user] .message-content").evaluate_all(WORDS)


def settle(page, server, requests: int | None = None):
    """Wait for the server to finish its replies (its own counters), then for the page to be idle."""
    if requests is not None:
        server.wait_until(lambda h: h["requests"] >= requests and h["active"] == 0)
    page.wait_for_function(IDLE)


def send(page, server, text: str):
    # counted before sending: the page can be idle for a moment between the reply's chained events, before
    # the new exchange is drawn
    asked, answered = len(users(page)) + 1, len(bots(page)) + 1
    before = server.health()["requests"]
    page.fill("#chat-input textarea", text)
    page.click("#send")
    settle(page, server, before + 1)
    page.wait_for_function("""([u, b]) => document.querySelectorAll('#chatbot [data-testid=user]').length >= u
                              && document.querySelectorAll('#chatbot [data-testid=bot]').length >= b""",
                           arg=[asked, answered])


def click_and_generate(page, server, selector: str):
    before = server.health()["requests"]
    page.click(selector)
    settle(page, server, before + 1)


def info(page) -> str:
    return page.inner_text("#selected-info")


def act(page, index: int, name: str) -> None:
    """Click an action in message `index`'s action bar (prev, next, edit, copy, branch, regenerate)."""
    page.locator(f"#chatbot .msg-actions.mi-{index} .act-{name}").click()


def wait_version(page, index: int, label: str) -> None:
    """Wait until message `index` shows version `label` ("2/3") beside its arrows."""
    page.wait_for_function("([i, v]) => { const e = document.querySelector(`#chatbot .msg-actions.mi-${i} "
                           ".msg-version`); return e && e.innerText.trim() === v; }", arg=[index, label])


def again(attempt, what: str, tries: int = 5):
    """Run `attempt` until it returns something true (a Playwright timeout inside it counts as a miss), at
    most `tries` times; its result. For a user's action that a busy machine can swallow (a click landing
    while Gradio redraws, a press reaching the server before the event just caused): a user does it again.
    An action that never works still fails, naming `what`."""
    for _ in range(tries):
        try:
            result = attempt()
        except PlaywrightTimeout:
            continue
        if result:
            return result
    raise AssertionError(what() if callable(what) else what)


def open_editor(page, index: int, where: str = "#chatbot"):
    """Click Edit on message `index` until its editor opens; the editor's text box. A click can land while
    Gradio redraws the bubbles (a reply's last update arriving late on a busy machine) and reach a button
    that is already gone, so nothing hears it."""
    editor = page.locator(f"{where} .msg-editor textarea")

    def attempt():
        act(page, index, "edit")
        editor.wait_for(timeout=30_000)
        return editor

    return again(attempt, f"message {index}'s editor never opened")


def edit_in_place(page, index: int, text: str) -> None:
    """Edit message `index` where it is shown: its words open in an editor in the bubble; Save writes them."""
    editor = open_editor(page, index)
    editor.fill(text)
    page.click("#chatbot .msg-editor-save")


def test_regenerate_keeps_versions_and_arrows_browse_them(browser, server, tmp_path):
    page = own_page(browser, server, "regen")
    send(page, server, "hello")
    first = bots(page)[-1]
    click_and_generate(page, server, "#regenerate")
    wait_version(page, 1, "2/2")  # the arrows are on the reply itself
    second = bots(page)[-1]
    assert len(bots(page)) == 1
    act(page, 1, "prev")
    wait_version(page, 1, "1/2")
    assert bots(page)[-1] == first
    act(page, 1, "next")
    wait_version(page, 1, "2/2")
    assert bots(page)[-1] == second
    # versions survive a reload: they are in the database, not the page
    page.reload()
    page.wait_for_selector("#chat-input textarea")
    page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=bot]').length >= 1")
    page.wait_for_function(IDLE)
    wait_version(page, 1, "2/2")
    assert bots(page)[-1] == second and "version 2/2" in info(page)
    # export the chat as JSON and import it back: a second chat with both versions
    page.get_by_text("Character cards and chat files").click()
    page.click("#export-chat")
    link = page.wait_for_selector("#download a[href]")
    exported = page.request.get(link.get_attribute("href")).body()
    assert b'"format": "parlour-chat"' in exported
    saved = tmp_path / "export.json"
    saved.write_bytes(exported)
    page.set_input_files("#chat-import input[type=file]", str(saved))
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('Imported')")
    page.wait_for_function("() => document.querySelectorAll('#chat-list label').length === 2")
    wait_version(page, 1, "2/2")
    assert bots(page)[-1] == second and "version 2/2" in info(page)


def test_edit_any_message_and_branch_here(browser, server):
    page = own_page(browser, server, "editor")
    send(page, server, "first question")
    send(page, server, "second question")
    editor = open_editor(page, 0, "#chatbot [data-testid=user]")  # the first message's words, in its own bubble
    assert editor.input_value() == "first question"
    editor.fill("edited question")
    page.click("#chatbot .msg-editor-save")
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('Saved the edit')")
    assert users(page) == ["edited question", "second question"]
    # branch at the first reply: a new chat with two messages, the original keeps four
    act(page, 1, "branch")
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('Branched')")
    assert users(page) == ["edited question"] and len(bots(page)) == 1
    labels = page.locator("#chat-list label").all_inner_texts()
    assert any("(branch)" in label for label in labels) and len(labels) == 2
    page.locator("#chat-list label", has_text="first question ·", has_not_text="branch").click()
    page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=user]').length == 2")
    assert users(page) == ["edited question", "second question"]


def test_continue_extends_the_reply_and_impersonate_fills_the_input(browser, server):
    from modules.store import ChatStore

    def saved_reply() -> str:  # the words as written (the page shows them as markdown: "**" can pair up later)
        store = ChatStore(server.root / "user_data" / "chats.sqlite")
        return store.path("cont", store.list_chats("cont")[0].id)[-1].content

    page = own_page(browser, server, "cont")
    send(page, server, "tell me more")
    before = saved_reply()
    click_and_generate(page, server, "#continue")
    after = saved_reply()
    assert after.startswith(before) and len(after) > len(before)
    page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=bot]').length === 1")
    click_and_generate(page, server, "#impersonate")
    page.wait_for_function("() => document.querySelector('#chat-input textarea').value.length > 0")
    assert len(users(page)) == 1 and len(bots(page)) == 1  # nothing was added to the chat


def test_remove_last_returns_the_text_to_the_input(browser, server):
    page = own_page(browser, server, "remover")
    send(page, server, "oops, wrong message")
    page.click("#remove-last")
    page.wait_for_function("() => document.querySelector('#chat-input textarea').value === 'oops, wrong message'")
    page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=user]').length === 0")


PAYLOADS = ["<img src=x onerror=alert('img')>", "<script>alert('script')</script>",
            "[click me](javascript:alert('link'))", "<svg/onload=alert('svg')>",
            "<iframe srcdoc=\"<script>parent.alert('frame')</script>\"></iframe>",
            "![pic](https://example.invalid/x.png)"]


def test_xss_payloads_never_execute(browser, server):
    page = own_page(browser, server, "xss")
    page.fill("#chat-input textarea", "\n\n".join(PAYLOADS))
    page.click("#dummy-message")
    page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=user]').length === 1")
    page.fill("#chat-input textarea", "\n\n".join(PAYLOADS))
    page.click("#dummy-reply")
    page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=bot]').length >= 1")
    page.wait_for_function(IDLE)
    for link in page.locator("#chatbot a", has_text="click me").all():
        link.click()
    bad = page.evaluate("""() => document.querySelectorAll(
        '#chatbot script, #chatbot iframe, #chatbot svg [onload], #chatbot [onerror], #chatbot [onload], '
        + '#chatbot a[href^="javascript"], #chatbot img[src*="example.invalid"]').length""")
    assert bad == 0
    assert page.evaluate("() => window.__xss") == [] and page.dialogs == []
    assert "onerror=alert" in users(page)[0]  # shown as text, not dropped silently
    # the chat title (first user line) is a payload too: shown as text in the sidebar
    assert any("<img src=x" in label for label in page.locator("#chat-list label").all_inner_texts())


def login(browser, url, user, password):
    context = browser.new_context()
    context.add_init_script(TRAP)
    page = context.new_page()
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.goto(url)
    page.fill("input[type=text]", user)
    page.fill("input[type=password]", password)
    page.keyboard.press("Enter")
    page.wait_for_selector("#chat-input textarea")
    page.wait_for_function(IDLE)
    return page


def test_two_users_are_isolated(browser, server):
    ann = own_page(browser, server, "ann")
    bob = own_page(browser, server, "bob")
    before = server.health()["requests"]
    ann.fill("#chat-input textarea", "ann secret alpha")
    bob.fill("#chat-input textarea", "bob secret beta")
    ann.click("#send")
    bob.click("#send")  # both chat at once
    server.wait_until(lambda h: h["requests"] >= before + 2 and h["active"] == 0)
    for page in (ann, bob):
        page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=bot]').length >= 1")
        page.wait_for_function(IDLE)
    assert users(ann) == ["ann secret alpha"] and users(bob) == ["bob secret beta"]
    for page, other in ((ann, "bob"), (bob, "ann")):
        page.reload()
        page.wait_for_selector("#chat-input textarea")
        page.wait_for_function("() => document.querySelectorAll('#chat-list label').length >= 1")
        assert all(other not in label for label in page.locator("#chat-list label").all_inner_texts())
        page.fill("#chat-search textarea", f"{other} secret")
        page.press("#chat-search textarea", "Enter")
        page.wait_for_function(IDLE)
        page.wait_for_function("() => document.querySelectorAll('#chat-list label').length === 0")
    # a wrong password does not get in
    intruder = browser.new_context().new_page()
    intruder.goto(server.url)
    intruder.fill("input[type=text]", "ann")
    intruder.fill("input[type=password]", "wrong")
    intruder.keyboard.press("Enter")
    intruder.wait_for_selector("text=/Incorrect|invalid/i")
    assert intruder.locator("#chat-input").count() == 0
    # and in the database, each chat belongs to its user
    from modules.store import ChatStore

    store = ChatStore(server.root / "user_data" / "chats.sqlite")
    assert [c.title for c in store.list_chats("ann", character="Assistant")] == ["ann secret alpha"]
    assert [c.title for c in store.list_chats("bob", character="Assistant")] == ["bob secret beta"]
    assert store.list_chats("local") == []


def test_kill_minus_nine_mid_stream_keeps_every_chat(browser, start_server, models_dir, short_presets, tmp_path):
    args = ("--models-dir", str(models_dir), "--model", "parlour-micro", "--presets-dir", str(short_presets))
    server = start_server(*args, "--preset", "Long")
    page = open_page(browser, server.url)
    for button, text in (("#dummy-message", "a finished chat"), ("#dummy-reply", "a finished reply")):
        page.fill("#chat-input textarea", text)
        page.click(button)
        page.wait_for_function("() => document.querySelector('#chat-input textarea').value === ''")
    # Stop mid-reply: the words so far stay, marked as stopped
    page.click("#new-chat")
    page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=user]').length === 0")
    page.fill("#chat-input textarea", "stop me")
    page.click("#send")
    server.wait_until(lambda h: h["active"] == 1 and h["tokens"] >= 30)
    page.click("#stop")
    server.wait_until(lambda h: h["active"] == 0)
    page.click("#new-chat")
    page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=user]').length === 0")
    start_tokens = server.health()["tokens"]
    page.fill("#chat-input textarea", "the reply to this is cut off")
    page.click("#send")
    server.wait_until(lambda h: h["active"] == 1 and h["tokens"] >= start_tokens + 100)
    server.proc.kill()  # SIGKILL: no cleanup at all
    server.proc.wait()
    page.context.close()
    from modules.store import ChatStore

    store = ChatStore(tmp_path / "user_data" / "chats.sqlite")
    chats = store.list_chats("local")
    assert len(chats) == 3
    stopped = store.path("local", next(c.id for c in chats if c.title == "stop me"))[-1]
    assert stopped.meta["finish_reason"] == "cancelled" and stopped.complete and stopped.content
    cut = store.path("local", chats[0].id)
    assert cut[-1].role == "assistant" and not cut[-1].complete and len(cut[-1].content) > 0
    # the restarted server opens every chat
    again = start_server(*args, "--preset", "Short")
    page = open_page(browser, again.url)
    for title in ("a finished chat", "stop me", "the reply to this is cut off"):
        page.locator("#chat-list label", has_text=title).click()
        page.wait_for_function("(t) => [...document.querySelectorAll('#chatbot [data-testid=user]')]"
                               ".some(e => e.innerText.includes(t))", arg=title)
        page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=bot]').length === 1")
    assert bots(page)[0].strip()  # the partial reply is shown


def test_card_import_greets_safely_incognito_saves_nothing_and_shortcuts_work(browser, server, characters, tmp_path):
    import base64
    import json

    from modules.characters import blank_png, png_with_text
    from modules.store import ChatStore

    card = {"spec": "chara_card_v2", "data": {"name": "Pirate Mira", "description": "{{char}} sails.",
                                              "first_mes": "Ahoy {{user}}! <img src=x onerror=alert('greet')>"}}
    path = tmp_path / "mira.png"
    path.write_bytes(png_with_text(blank_png(), "chara", base64.b64encode(json.dumps(card).encode())))
    page = own_page(browser, server, "card")
    page.get_by_text("Character cards and chat files").click()
    page.set_input_files("#card-import input[type=file]", str(path))
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('Pirate Mira')")
    # the imported character is picked, and its first chat opens with its greeting
    page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=bot]').length === 1")
    assert bots(page)[0].startswith("Ahoy card!") and "<img src=x" in bots(page)[0]  # {{user}}: the login's name
    assert page.evaluate("() => window.__xss") == [] and page.dialogs == []
    # keyboard: Ctrl+Enter regenerates (the greeting has no question before it: refused with a message)
    page.fill("#chat-input textarea", "who are you?")
    page.click("#send")
    page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=bot]').length === 2")
    settle(page, server)
    server.wait_until(lambda h: h["active"] == 0)
    before = server.health()["requests"]
    page.locator("#chat-input textarea").press("Control+Enter")
    settle(page, server, before + 1)
    wait_version(page, 2, "2/2")
    # incognito: a chat that never reaches the database
    page.check("#incognito input")
    page.click("#new-chat")
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('Incognito')")
    page.fill("#chat-input textarea", "incognito words zanzibar")
    page.click("#dummy-message")
    page.wait_for_function("() => [...document.querySelectorAll('#chatbot [data-testid=user]')]"
                           ".some(e => e.innerText.includes('zanzibar'))")
    store = ChatStore(server.root / "user_data" / "chats.sqlite")
    assert store.search("card", "zanzibar") == []
    assert [c.character for c in store.list_chats("card")] == ["Pirate Mira"]
    assert (characters / "Pirate Mira.yaml").is_file() and (characters / "Pirate Mira.png").is_file()


def test_sidebar_rename_search_delete_prompt_preview_and_reproduce(browser, server):
    page = own_page(browser, server, "sidebar")
    send(page, server, "about the platypus")
    # reproduce: the same saved settings (seed included) give the same reply, as a new version
    first = bots(page)[-1]
    click_and_generate(page, server, "#reproduce")
    wait_version(page, 1, "2/2")
    assert bots(page)[-1] == first
    page.fill("#rename-title textarea", "Monotremes")
    page.click("#rename-chat")
    page.wait_for_function("() => [...document.querySelectorAll('#chat-list label')].some(l => "
                           "l.innerText.includes('Monotremes'))")
    page.click("#new-chat")
    page.fill("#chat-input textarea", "something else")
    page.click("#dummy-message")
    page.wait_for_function("() => document.querySelectorAll('#chat-list label').length === 2")
    page.fill("#chat-search textarea", "platypus")
    page.press("#chat-search textarea", "Enter")
    page.wait_for_function("() => document.querySelectorAll('#chat-list label').length === 1")
    assert "Monotremes" in page.inner_text("#chat-list")
    # instruct mode with a chosen template: the prompt preview shows that template's format
    page.locator("#chat-mode label", has_text="instruct").first.click()
    page.get_by_text("Prompt settings").click()
    page.fill("#instruction-template input", "Alpaca")
    page.press("#instruction-template input", "Enter")
    page.wait_for_function("() => document.querySelector('#template-source').innerText.includes('### Response')")
    page.click("#show-prompt")
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('Prompt:')")
    assert "### Instruction:" in page.inner_text("#prompt-preview")
    assert "### Instruction:" in page.inner_text("#chat-status")  # the derived stop string
    # delete asks first; "Keep it" keeps, "Really delete" deletes
    page.click("#delete-chat")
    page.click("#cancel-delete")
    page.wait_for_selector("#confirm-delete", state="hidden")
    page.click("#delete-chat")
    page.click("#confirm-delete")
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('Deleted')")
    page.fill("#chat-search textarea", "")
    page.press("#chat-search textarea", "Enter")
    page.wait_for_function("() => document.querySelectorAll('#chat-list label').length === 1")
