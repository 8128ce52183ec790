"""Templates: locale fallback, strict fields, the sandbox, autoescape, data never evaluated."""

from __future__ import annotations

from pathlib import Path

import pytest

from crm.notify.templates import RenderError, TemplateProblem, Templates, locale_chain, render


@pytest.fixture
def templates(tmp_path: Path) -> Templates:
    d = tmp_path / "email"
    d.mkdir()
    files = {
        "hello.subject": "Hello {{ first_name }}",
        "hello.txt": "Hi {{ first_name }}",
        "hello.html": "<p>Hi {{ first_name }}</p>",
        "hello.pt.subject": "Olá {{ first_name }}",
        "hello.pt.txt": "Oi {{ first_name }}",
        "hello.pt_BR.txt": "E aí, {{ first_name }}",
        "hello.pl.subject": "Cześć {{ first_name }}",
        "hello.pl.txt": "Dzień dobry, {{ first_name }}",
        "evil.subject": "{{ ''.__class__.__mro__ }}",
        "evil.txt": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "broken.subject": "{% if %}",
        "broken.txt": "x",
        "needs.subject": "{{ missing_field }}",
        "needs.txt": "x",
    }
    for name, text in files.items():
        (d / name).write_text(text, encoding="utf-8")
    return Templates("email", root=tmp_path)


def test_should_try_the_full_locale_then_the_language_then_the_default():
    assert locale_chain("pt_BR") == ["pt_BR", "pt", ""]
    assert locale_chain("pl-PL") == ["pl_PL", "pl", ""]
    assert locale_chain(None) == [""]
    assert locale_chain("../../etc") == [""]  # not a locale: never part of a path


def test_should_render_each_part_in_the_best_locale_available(templates):
    pt = templates.render_email("hello", {"first_name": "João"}, "pt_BR")
    assert (pt.subject, pt.text, pt.html) == ("Olá João", "E aí, João", "<p>Hi João</p>")
    pl = templates.render_email("hello", {"first_name": "Łucja"}, "pl_PL")
    assert (pl.subject, pl.text) == ("Cześć Łucja", "Dzień dobry, Łucja")
    ro = templates.render_email("hello", {"first_name": "Ștefan"}, "ro_RO")
    assert (ro.subject, ro.text) == ("Hello Ștefan", "Hi Ștefan")


def test_should_escape_html_but_not_text_parts(templates):
    r = templates.render_email("hello", {"first_name": "<b>Tom & Jerry</b>"}, None)
    assert r.html == "<p>Hi &lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>"
    assert r.text == "Hi <b>Tom & Jerry</b>"


def test_should_print_template_syntax_in_data_literally(templates):
    hostile = "{{ ''.__class__.__mro__ }}"
    r = templates.render_email("hello", {"first_name": hostile}, None)
    assert r.text == f"Hi {hostile}"


def test_should_fail_the_message_when_a_field_is_missing(templates):
    with pytest.raises(RenderError, match=r"missing field.*missing_field"):
        templates.render_email("needs", {"first_name": "x"}, None)


def test_should_refuse_a_template_that_reaches_for_python_internals(templates):
    with pytest.raises(RenderError, match="sandbox"):
        templates.render_email("evil", {}, None)
    with pytest.raises(RenderError, match="sandbox"):
        render(templates.from_string("{{ ''.__class__.__mro__ }}"), {})


def test_should_stop_the_run_on_a_broken_or_missing_template(templates):
    with pytest.raises(TemplateProblem, match=r"broken\.subject, line 1"):
        templates.check("broken", [None])
    with pytest.raises(TemplateProblem, match="no template email/nope"):
        templates.render_email("nope", {}, None)
    with pytest.raises(TemplateProblem, match="not a template name"):
        templates.render_email("../hello", {}, None)


def test_should_list_template_names_for_the_trigger_form(templates):
    assert templates.names("he") == ["hello"]
    assert "evil" in templates.names()


def test_should_use_an_edited_template_file_on_the_next_render_in_the_same_process(templates, tmp_path):
    import os

    assert templates.render_email("hello", {"first_name": "Ana"}, None).text == "Hi Ana"
    path = tmp_path / "email" / "hello.txt"
    path.write_text("Hello again, {{ first_name }}", encoding="utf-8")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))  # a later edit, whatever the fs clock
    assert templates.render_email("hello", {"first_name": "Ana"}, None).text == "Hello again, Ana"
    # another Templates object of the process shares the compiled cache: it sees the edit too
    assert Templates("email", root=tmp_path).render_email("hello", {"first_name": "Ana"}, None).text == (
        "Hello again, Ana"
    )
