"""Message templates: include/templates/<channel>/<name>[.<locale>].<part>, rendered in a Jinja sandbox.

Why a sandbox and StrictUndefined: templates are edited by the business, and the values they
render come from the CRM (customer names, notes). A missing field must fail that one message,
recorded on its ledger row, rather than put a blank in a customer's e-mail; a template that tries
to reach Python internals must fail loudly; and CRM values are only ever data (Jinja never
evaluates the output of an expression again, so `{{ name }}` with a name of `{{ 7*7 }}` prints
the braces literally).

E-mail parts: `subject` (one line, plain text), `txt` (plain body), `html` (autoescaped body).
Locale fallback: pt_BR -> pt -> the file without a locale.

Compiled templates are cached per process (one Jinja environment per root), with `auto_reload`:
each lookup compares the file's mtime (one stat) with the cached one, so a template edited on a
long-lived worker is used by the next render instead of the copy compiled at the worker's start.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateNotFound, TemplateSyntaxError
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from crm.config import TEMPLATES_DIR

EMAIL_PARTS = ("subject", "txt", "html")
_LOCALE_RE = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})?$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class TemplateProblem(ValueError):
    """A template cannot be used for every message (missing file, syntax error): the run stops."""


class RenderError(ValueError):
    """One message cannot be rendered (missing field, sandbox violation): that message fails."""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str | None
    locale: str  # the locale whose files were used ('' = the default files)


def locale_chain(locale: str | None) -> list[str]:
    """Locales to try, most specific first, ending with '' (the default files)."""
    if not locale or not _LOCALE_RE.match(locale):
        return [""]
    norm = locale.replace("-", "_")
    lang = norm.split("_")[0].lower()
    chain = [norm] if norm != lang else []
    return [*chain, lang, ""]


class Templates:
    """Finds and renders the templates of one channel; compiled once per process, recompiled when edited."""

    def __init__(self, channel: str, root: Path | str = TEMPLATES_DIR) -> None:
        self.channel = channel
        self.root = Path(root)
        self._html_env = _environment(str(self.root), autoescape=True)
        self._text_env = _environment(str(self.root), autoescape=False)

    def names(self, prefix: str = "") -> list[str]:
        """Template names of this channel (without locale/part), e.g. for a Param's enum."""
        folder = self.root / self.channel
        found = {p.name.split(".")[0] for p in folder.glob(f"{prefix}*.*") if p.is_file()}
        return sorted(n for n in found if _NAME_RE.match(n))

    def path_for(self, name: str, part: str, locale: str | None) -> tuple[str, str]:
        """(template path relative to root, locale used) with the locale fallback."""
        if not _NAME_RE.match(name or ""):
            raise TemplateProblem(f"not a template name: {name!r}")
        for loc in locale_chain(locale):
            rel = f"{self.channel}/{name}.{loc}.{part}" if loc else f"{self.channel}/{name}.{part}"
            if (self.root / rel).is_file():
                return rel, loc
        raise TemplateProblem(f"no template {self.channel}/{name}[.<locale>].{part} under {self.root}")

    def load(self, name: str, part: str, locale: str | None) -> tuple[Template, str]:
        rel, loc = self.path_for(name, part, locale)
        env = self._html_env if part == "html" else self._text_env
        try:
            return env.get_template(rel), loc
        except TemplateSyntaxError as exc:
            raise TemplateProblem(f"{rel}, line {exc.lineno}: {exc.message}") from exc
        except TemplateNotFound as exc:  # pragma: no cover - path_for checked it
            raise TemplateProblem(str(exc)) from exc

    def check(self, name: str, locales: list[str | None]) -> None:
        """Compile every e-mail part for these locales now, so a broken file stops the run before any send."""
        for loc in {*locales, None}:
            for part in ("subject", "txt"):
                self.load(name, part, loc)
            try:
                self.load(name, "html", loc)
            except TemplateProblem as exc:
                if "no template" not in str(exc):
                    raise

    def render_email(
        self, name: str, fields: Mapping[str, Any], locale: str | None, subject: Template | None = None
    ) -> RenderedEmail:
        """Subject, text and html of one message; `subject` (compiled from a Param) replaces the file's."""
        subject_tpl, loc = (subject, "") if subject is not None else self.load(name, "subject", locale)
        text_tpl, loc = self.load(name, "txt", locale)
        try:
            html_tpl, _ = self.load(name, "html", locale)
        except TemplateProblem as exc:
            if "no template" not in str(exc):
                raise
            html_tpl = None
        subject_text = " ".join(render(subject_tpl, fields).split())  # one line
        return RenderedEmail(
            subject=subject_text,
            text=render(text_tpl, fields),
            html=render(html_tpl, fields) if html_tpl is not None else None,
            locale=loc,
        )

    def from_string(self, source: str, *, html: bool = False) -> Template:
        """Compile a template given as text (a Param), in the same sandbox."""
        env = self._html_env if html else self._text_env
        try:
            return env.from_string(source)
        except TemplateSyntaxError as exc:
            raise TemplateProblem(f"template text, line {exc.lineno}: {exc.message}") from exc


def render(template: Template, fields: Mapping[str, Any]) -> str:
    """Render with the message's fields; failures become RenderError with a readable reason."""
    try:
        return template.render(**fields)
    except SecurityError as exc:
        raise RenderError(f"{_where(template)}: blocked by the template sandbox: {exc}") from exc
    except UndefinedError as exc:
        raise RenderError(f"{_where(template)}: missing field: {exc.message}") from exc
    except Exception as exc:  # a filter on bad data, a division by zero in a template...
        raise RenderError(f"{_where(template)}: {type(exc).__name__}: {exc}") from exc


def _where(template: Template) -> str:
    return template.name or "template text"


@functools.cache
def _environment(root: str, *, autoescape: bool) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=FileSystemLoader(root),
        autoescape=autoescape,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        auto_reload=True,  # a stat per lookup: edits reach long-lived workers; unchanged files stay compiled
    )
