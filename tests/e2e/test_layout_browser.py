"""The page at a phone's size (390x844) and the light/dark toggle, in a real browser.

At phone width the message box and the newest reply are on the first screen, the chat list and the
chat's settings are in a drawer, no two buttons overlap, and Stop stays on screen while a reply is
being written, wherever the page is scrolled.
"""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import ROOT, serving
from tests.e2e.test_chat_browser import IDLE, bots, settle

pytestmark = pytest.mark.browser
PHONE = {"width": 390, "height": 844}
RECT = "(e) => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("layout")


@pytest.fixture()
def hold(home):
    """The file that holds a reply mid-way while it exists (the hold_tokens test extension); gone after
    the test whatever happens, so no later test's reply waits on it."""
    path = home / "user_data" / "extensions" / "hold_tokens" / "hold"
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def server(home, models_dir):
    (home / "presets").mkdir()
    (home / "presets" / "Long.yaml").write_text("max_new_tokens: 1800\nban_eos_token: true\n")
    # hold_tokens pauses a reply while its `hold` file exists: the page is looked at mid-reply on any machine
    shutil.copytree(ROOT / "tests" / "fixtures" / "extensions" / "hold_tokens",
                    home / "user_data" / "extensions" / "hold_tokens")
    with serving(home, "--models-dir", str(models_dir), "--model", "parlour-micro", "--extensions", "hold_tokens",
                 short_preset=40) as process:
        yield process


# Each button's name and the part of it a user can see: its box cut to every ancestor that clips what
# overflows it. A message's action bar scrolled out of the chat's view still has a box (above the chat,
# where the top bar is), but nobody sees it there, so it cannot overlap anything.
SEEN_BOXES = """(els) => els.map((e) => {
    let [l, t, r, b] = (({left, top, right, bottom}) => [left, top, right, bottom])(e.getBoundingClientRect());
    for (let a = e.parentElement; a; a = a.parentElement) {
        const s = getComputedStyle(a);
        if (s.overflowX !== 'visible' || s.overflowY !== 'visible') {
            const c = a.getBoundingClientRect();
            l = Math.max(l, c.left); t = Math.max(t, c.top); r = Math.min(r, c.right); b = Math.min(b, c.bottom);
        }
    }
    return [e.id || e.innerText || e.title || e.outerHTML.slice(0, 80), l, t, r, b];
}).filter((x) => x[3] > x[1] && x[4] > x[2])"""


# The chat's last two bubbles are the message just sent and a reply with words in it.
WRITING = """() => {
    const turns = [...document.querySelectorAll('#chatbot [data-testid=user], #chatbot [data-testid=bot]')];
    const [asked, reply] = turns.slice(-2);
    return asked?.dataset.testid === 'user' && asked.innerText.includes('tell me everything')
        && reply.dataset.testid === 'bot' && reply.innerText.trim() !== '';
}"""


def phone_page(browser, url: str):
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#chat-input textarea")
    page.wait_for_function(IDLE)
    return page


def rect(page, selector: str) -> list[float]:
    return page.locator(selector).last.evaluate(RECT)


def on_screen(box: list[float]) -> bool:
    left, top, right, bottom = box
    return left >= 0 and top >= 0 and right <= PHONE["width"] + 0.5 and bottom <= PHONE["height"] + 0.5


def test_phone_first_screen_has_the_box_and_the_newest_reply_and_the_drawer_holds_the_rest(browser, server):
    page = phone_page(browser, server.url)
    for text in ("first question", "second question, a little longer than the first one"):
        before = server.health()["requests"]
        page.fill("#chat-input textarea", text)
        page.click("#send")
        settle(page, server, before + 1)
    page.wait_for_function("() => document.querySelectorAll('#chatbot .msg-actions').length === 4")
    page.reload()  # the page as it opens: scrolled to the top, the chat drawn from the store
    page.wait_for_selector("#chatbot .mi-3 .msg-actions, #chatbot .msg-actions.mi-3")
    page.wait_for_function(IDLE)
    assert page.evaluate("() => window.scrollY") == 0
    assert bots(page)[-1].strip()
    assert on_screen(rect(page, "#chat-input textarea")), rect(page, "#chat-input textarea")
    assert on_screen(rect(page, "#send")) and on_screen(rect(page, "#stop"))
    # the newest reply, down to its action bar, is on the first screen (the chat scrolled to its end)
    assert on_screen(rect(page, "#chatbot [data-testid=bot]")), rect(page, "#chatbot [data-testid=bot]")
    assert on_screen(rect(page, "#chatbot .msg-actions.mi-3"))
    # the chat list and settings are in the drawer, off screen until opened
    assert rect(page, "#chat-list")[2] <= 0 and rect(page, "#character")[2] <= 0
    page.click("#drawer-toggle")
    page.wait_for_function("() => { const r = document.querySelector('#chat-list').getBoundingClientRect();"
                           " return r.left >= 0 && r.right > 100; }")
    assert on_screen(rect(page, "#character")) and on_screen(rect(page, "#new-chat"))
    page.locator("#chat-list label").first.click()  # picking a chat closes the drawer
    page.wait_for_function("() => document.querySelector('#chat-list').getBoundingClientRect().right <= 0")
    page.close()


def test_phone_buttons_do_not_overlap_and_stop_stays_on_screen_while_writing(browser, server, hold):
    page = phone_page(browser, server.url)
    boxes = page.locator("#chat-main button:visible").evaluate_all(SEEN_BOXES)
    assert len(boxes) >= 9
    for i, (name_a, *a) in enumerate(boxes):
        for name_b, *b in boxes[i + 1:]:
            overlap_x = min(a[2], b[2]) - max(a[0], b[0])
            overlap_y = min(a[3], b[3]) - max(a[1], b[1])
            assert overlap_x <= 0.5 or overlap_y <= 0.5, f"{name_a!r} overlaps {name_b!r}"
    page.close()
    # a long reply: while it is being written, Stop is on screen at the top of the page and at its end.
    # (The Long preset is picked at desktop width, where the Parameters tab is in the tab bar; then the
    # same page, the same controls, becomes phone-sized.)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.url)
    page.wait_for_selector("#chat-input textarea")
    page.wait_for_function(IDLE)
    page.get_by_role("tab", name="Parameters").click()
    page.locator("#preset-dropdown input").click()
    page.get_by_role("option", name="Long", exact=True).click()
    page.get_by_text("Loaded preset Long").wait_for()
    page.get_by_role("tab", name="Chat").click()
    page.set_viewport_size(PHONE)
    page.wait_for_function("() => window.innerWidth === 390")
    before = server.health()["requests"]
    hold.touch()
    page.fill("#chat-input textarea", "tell me everything")
    page.click("#send")
    server.wait_until(lambda h: h["active"] == 1 and h["tokens"] > 0 and h["requests"] >= before)
    # The page shows the reply being written (the message, then the reply's first words) before it is
    # scrolled: a bubble drawn after a scroll to the end moves the end (CI once waited 180 s on that).
    page.wait_for_function(WRITING)
    for scroll in ("0", "document.documentElement.scrollHeight"):
        # scrolled again on each try, until the page is where it was sent (the end is where it is now)
        page.wait_for_function(f"() => {{ window.scrollTo(0, {scroll}); return Math.abs(window.scrollY - "
                               f"Math.max(0, Math.min({scroll}, document.documentElement.scrollHeight - "
                               "window.innerHeight))) < 2; }")
        assert on_screen(rect(page, "#stop")), (scroll, rect(page, "#stop"))
    assert server.health()["active"] == 1  # all of that while the reply was still being written
    page.click("#stop")
    hold.unlink()
    server.wait_until(lambda h: h["active"] == 0)
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.startsWith('Stopped')")
    page.close()


def test_light_and_dark_are_remembered_by_the_browser(browser, server):
    context = browser.new_context()
    page = context.new_page()
    page.goto(server.url)
    page.wait_for_selector("#chat-input textarea")
    page.wait_for_function("() => document.body.classList.contains('dark')")  # dark by default
    page.click("#theme-toggle")
    page.wait_for_function("() => !document.body.classList.contains('dark')")
    background = page.evaluate("() => getComputedStyle(document.querySelector('#chatbot'))"
                               ".backgroundColor")
    page.reload()
    page.wait_for_selector("#chat-input textarea")
    page.wait_for_function(IDLE)
    assert not page.evaluate("() => document.body.classList.contains('dark')")  # still light
    other = context.browser.new_context().new_page()  # another browser profile has its own choice
    other.goto(server.url)
    other.wait_for_selector("#chat-input textarea")
    other.wait_for_function("() => document.body.classList.contains('dark')")
    page.click("#theme-toggle")
    page.wait_for_function("() => document.body.classList.contains('dark')")
    assert page.evaluate("() => getComputedStyle(document.querySelector('#chatbot'))"
                         ".backgroundColor") != background
    page.reload()
    page.wait_for_selector("#chat-input textarea")
    page.wait_for_function("() => document.body.classList.contains('dark')")
    other.close()
    page.close()
