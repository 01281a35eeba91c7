"""Hostile chat templates end within their budget, with a clear error naming the template, and leave the
CPU idle: through the API (`instruction_template_str`), a model folder's `chat_template.jinja`, the Chat
tab's template box (in a real browser), and in-process for the long tail of operations.

CPU is measured from /proc as the server process's CPU seconds (a loaded machine slows wall-clock time,
not the CPU a render burns): while the request runs, at most the render budget plus a margin; in the
three seconds after the error, well under a second."""

from __future__ import annotations

import shutil
import time
import tracemalloc

import httpx
import pytest

from modules.templates import CHATML, RENDER_SECONDS, ChatTemplate, TemplateError
from tests.security.conftest import cpu_in_window, cpu_seconds

BIG = "{% set s = 'x' * 1000000 %}"
#: (name, template): each would run for hours or allocate gigabytes without the budget
ATTACKS = {
    "nested loops over strings": "{% set s = 'ab' * 50000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "nested loops over lists": "{% set l = range(1000)|list %}{% for a in l %}{% for b in l %}{% for c in l %}"
                               "{% endfor %}{% endfor %}{% endfor %}",
    "loop over messages forever": "{% for i in range(1000000) %}{% for m in messages %}{% for c in m.content %}"
                                  "{% endfor %}{% endfor %}{% endfor %}",
    "slow steps (time budget)": BIG + "{% for i in range(1000000) %}{% if s.count('y') %}{% endif %}{% endfor %}",
    "center": "{{ 'x'.center(999999999) }}",
    "ljust": "{{ 'x'.ljust(10**9) }}",
    "rjust": "{{ 'x'.rjust(10**9) }}",
    "zfill": "{{ '1'.zfill(999999999) }}",
    "percent width": "{{ '%0999999999d' % 1 }}",
    "percent precision": "{{ '%.999999999f' % 1.0 }}",
    "percent star": "{{ '%*d' % (999999999, 1) }}",
    "bytes percent": "{{ '%0999999999d'.encode() % 1 }}",
    "bytes center": "{{ 'x'.encode().center(999999999) }}",
    "percent many": BIG + "{{ ('%s' * 1000) % ((s,) * 1000) }}",
    "replace": BIG + "{{ s.replace('x', s) }}",
    "replace filter": BIG + "{{ s|replace('x', s) }}",
    "str join": BIG + "{{ s.join([s, s, s, s, s]) }}",
    "join filter": BIG + "{{ [s, s, s, s, s, s]|join(s) }}",
    "chained power": "{{ ((10 ** 64) ** 64) ** 64 }}",
    "repeated squaring": "{% set ns = namespace(x=7) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
    "doubling with ~": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "doubling with +": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "set block amplification": "{% set x %}{% for i in range(1000000) %}" + "A" * 4000 + "{% endfor %}{% endset %}",
    "macro amplification": "{% macro m() %}" + "B" * 4000 + "{% endmacro %}{% set ns = namespace(s='') %}"
                           "{% for i in range(100000) %}{% set ns.s = m() ~ m() %}{% endfor %}",
    "list of references as text": BIG + "{{ [s, s, s, s, s, s, s, s] }}",
    "repeated list as text": BIG + "{{ ([s] * 100)|string }}",
    "format width": "{{ '{:>999999999}'.format(1) }}",
    "format nested width": "{{ '{:>{w}}'.format(1, w=999999999) }}",
    "format many fields": BIG + "{{ ('{0}' * 10000).format(s) }}",
    "indent": "{{ ('x\\n' * 100000)|indent(100000) }}",
    "center filter": "{{ 'x'|center(999999999) }}",
    "batch fill": "{{ [1]|batch(999999999, 'x')|list }}",
    "to_bytes": "{{ (1).to_bytes(999999999, 'big') }}",
    "expandtabs": "{{ ('\\t' * 100000).expandtabs(100000) }}",
    "translate": BIG + "{{ s.translate({120: s}) }}",
    "tojson indent": "{{ messages|tojson(indent=999999999) }}",
    "deep nesting": "{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}"
                    "{{ ns.x }}",
    "sum of lists": "{% set l = [range(90000)|list] * 10 %}{{ (l|sum(start=[]))|length }}",
    "recursive macro": "{% macro f() %}{{ f() }}{{ f() }}{% endmacro %}{{ f() }}",
    "recursive loop": "{% for x in [1, 2] recursive %}{{ loop([1, 2]) }}{% endfor %}",
    "huge range": "{{ range(10 ** 12)|list }}",
    "big list": "{{ (range(200000)|list)|length }}",
    "big dict": "{{ dict.fromkeys(range(200000))|length }}",
    "split into items": BIG + "{{ s.split('x')|length }}",
    "lipsum": "{{ lipsum(10 ** 6) }}",
    "many outputs": "{% for i in range(1000000) %}{{ 'x' * 1000 }}{% endfor %}",
    "huge raise_exception": BIG + "{{ raise_exception(s) }}",
}
#: the ones sent to a real server (each one costs a CPU window): one of each kind
SERVER_ATTACKS = ["nested loops over strings", "loop over messages forever", "slow steps (time budget)", "center",
                  "percent width", "replace", "ljust", "zfill", "join filter", "chained power",
                  "set block amplification", "deep nesting", "recursive macro"]
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize("name", list(ATTACKS))
def test_in_process_attack_ends_within_budget(name):
    template = ChatTemplate(ATTACKS[name], name="the test template")
    tracemalloc.start()
    cpu = time.thread_time()
    try:
        with pytest.raises(TemplateError) as error:
            template.render(MESSAGES)
        spent = time.thread_time() - cpu
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(error.value).startswith("the test template "), str(error.value)
    assert len(str(error.value)) < 1000  # one readable line, never a megabyte of template output
    assert spent < RENDER_SECONDS + 1.5, spent
    assert peak < 400 * 1024 * 1024, f"{peak / 2**20:.0f} MiB"


def test_memory_error_never_escapes(monkeypatch):
    template = ChatTemplate("{{ messages[0].content.upper() }}")

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(template._env, "to_text", no_memory)
    with pytest.raises(TemplateError, match="ran out of memory"):
        template.render(MESSAGES)


@pytest.mark.parametrize("source", ["{{ " + "(" * 50_000 + "1" + ")" * 50_000 + " }}",
                                    "{% if 1 %}" * 3000 + "{% endif %}" * 3000,
                                    "x" * 300_000])
def test_hostile_sources_fail_to_compile_cleanly(source):
    with pytest.raises(TemplateError, match="does not compile|at most"):
        ChatTemplate(source, name="the test template")


REAL_TEMPLATES = {
    # the shapes real models ship: namespace flags, loop.index, tojson, tools, content parts, raise_exception
    "tools": "{%- if tools %}{{- '<|im_start|>system\\n' + (messages[0].content if messages[0].role == 'system' "
             "else 'You are helpful.') + '\\n# Tools\\n' }}{%- for tool in tools %}{{- tool|tojson }}{%- endfor %}"
             "{{- '<|im_end|>\\n' }}{%- endif %}{%- set ns = namespace(last_user=0) %}"
             "{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}"
             "{%- endfor %}{%- for m in messages %}{%- if m.content is string %}{%- set c = m.content %}"
             "{%- else %}{%- set c = m.content|map(attribute='text')|join('') %}{%- endif %}"
             "{{- '<|im_start|>' + m.role + '\\n' + c|trim + '<|im_end|>' + '\\n' }}{%- endfor %}"
             "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
    "alternation": "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
                   "(loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate') }}{% endif %}"
                   "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'].strip() + ' [/INST]' }}"
                   "{% else %}{{ ' ' + message['content'].strip() + eos_token }}{% endif %}{% endfor %}",
    "macros and format": "{% macro turn(role, text) %}{{ '<|{}|>\\n{}'.format(role, text) }}{% endmacro %}"
                         "{% for m in messages %}{{ turn(m.role, m.content) }}{{ '\\n' }}{% endfor %}"
                         "{{ '%s tokens' % (messages|length) }}{{ ('=' * 10)|center(20) }}",
}


@pytest.mark.parametrize("name", list(REAL_TEMPLATES))
def test_real_world_shapes_still_render(name):
    long_chat = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "word " * 2000}
                 for i in range(99)]
    prompt = ChatTemplate(REAL_TEMPLATES[name]).render(long_chat, bos_token="<s>", eos_token="</s>",
                                                       tools=[{"name": "f", "parameters": {}}])
    assert "message 98" in prompt and len(prompt) > 99 * 10_000


# -- against a real server ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(module_server):
    return module_server()


def _chat(server, template: str, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(server.url + path, timeout=120, json={
        "messages": MESSAGES, "mode": "instruct", "instruction_template_str": template, "max_tokens": 2})


@pytest.mark.parametrize("name", SERVER_ATTACKS)
def test_api_template_attack_is_a_400_and_the_cpu_goes_idle(server, name):
    pid = server.proc.pid
    before = cpu_seconds(pid)
    response = _chat(server, ATTACKS[name])
    during = cpu_seconds(pid) - before
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["param"] == "instruction_template_str"
    assert "custom instruction template" in error["message"]
    assert during < RENDER_SECONDS + 1.5, f"the request used {during:.2f} s of CPU"
    idle = cpu_in_window(pid)
    assert idle < 0.5, f"{idle:.2f} CPU seconds in the 3 s after the error"
    assert server.health()["rss_bytes"] < 1.5 * 2**30


def test_chat_prompt_route_is_bounded_too(server):
    response = _chat(server, ATTACKS["nested loops over strings"], "/v1/internal/chat-prompt")
    assert response.status_code == 400 and "custom instruction template" in response.json()["error"]["message"]
    assert cpu_in_window(server.proc.pid) < 0.5
    ok = _chat(server, CHATML, "/v1/internal/chat-prompt")  # and a normal template still works afterwards
    assert ok.status_code == 200 and "hello" in ok.json()["prompt"]


def test_oversized_template_source_is_refused(server):
    response = _chat(server, "{{ 'x' }}" * 40_000)
    assert response.status_code == 400 and "at most" in response.json()["error"]["message"]


def test_model_folder_template_is_bounded(module_server, models_dir, tmp_path_factory):
    """A downloaded model whose chat_template.jinja never ends: every request gets a 400, the server stays idle."""
    folder = tmp_path_factory.mktemp("hostile-models")
    shutil.copytree(models_dir / "parlour-micro", folder / "parlour-micro")
    (folder / "parlour-micro" / "chat_template.jinja").write_text(ATTACKS["nested loops over strings"])
    server = module_server(models=folder)
    pid = server.proc.pid
    for _ in range(2):
        before = cpu_seconds(pid)
        response = httpx.post(server.url + "/v1/chat/completions", timeout=120,
                              json={"messages": MESSAGES, "max_tokens": 2})
        assert response.status_code == 400, response.text[:300]
        assert "model's chat template was stopped" in response.json()["error"]["message"]
        assert cpu_seconds(pid) - before < RENDER_SECONDS + 1.5
        assert cpu_in_window(pid) < 0.5
    # raw completions do not use the template and still work
    assert httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2},
                      timeout=60).status_code == 200


def test_chat_tab_template_box_is_bounded(server, browser):
    page = browser.new_page()
    try:
        page.goto(server.url)
        page.wait_for_selector("#chat-input textarea", timeout=60_000)
        page.get_by_text("Prompt settings").click()
        editor = page.locator("#template-source .cm-content")
        editor.click()
        editor.fill(ATTACKS["nested loops over strings"])
        page.fill("#chat-input textarea", "hello")
        pid = server.proc.pid
        before = cpu_seconds(pid)
        page.click("#send")
        status = page.locator("#chat-status")
        status.get_by_text("custom instruction template was stopped").wait_for(timeout=60_000)
        assert cpu_seconds(pid) - before < RENDER_SECONDS + 1.5
        assert cpu_in_window(pid) < 0.5
    finally:
        page.close()
