import pytest

from modules.templates import CHATML, ChatTemplate, TemplateError


def test_chatml_renders_known_prompt():
    prompt = ChatTemplate(CHATML).render([{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Hi"}])
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ messages.append({'role': 'x'}) }}",
    "{% for i in range(10**9) %}{{ i }}{% endfor %}",
])
def test_sandbox_escapes_and_unbounded_loops_are_refused(source):
    with pytest.raises(TemplateError):
        ChatTemplate(source).render([{"role": "user", "content": "hi"}])


def test_template_raise_exception_is_a_clear_error():
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(TemplateError, match="roles must alternate"):
        template.render([])


def test_syntax_error_is_reported_at_compile_time():
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTemplate("{% for x in %}")


@pytest.mark.parametrize("source", [
    "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 10**9 }}",
    "{% set s = 'ab' * 900000 %}{{ s }}",
])
def test_nested_loops_and_huge_values_are_refused(source):
    # Without the budget the first template runs for hours; pytest-timeout would catch the hang.
    with pytest.raises(TemplateError):
        ChatTemplate(source).render([])
