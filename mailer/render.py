"""Staff-edited Jinja2 templates, rendered in the sandbox into an email's subject, text and HTML."""

from __future__ import annotations

import re
import traceback
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    Undefined,
    UndefinedError,
    nodes,
    select_autoescape,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import escape

from mailer.domain.campaign import step_line
from mailer.domain.models import Campaign
from mailer.errors import ConfigError
from mailer.render_context import PreviousMessage, build_context
from mailer.render_format import (
    OPT_OUT_LINES,
    format_long_date,
    format_money,
    format_percent,
    opt_out_line,
)

__all__ = [
    "OPT_OUT_LINES",
    "PARTS",
    "REQUIRED_LANGS",
    "PreviousMessage",
    "RenderedEmail",
    "TemplateSet",
    "build_context",
    "check_templates",
    "opt_out_line",
    "render",
]

REQUIRED_LANGS = ("es", "en")
# templates/<lang>/<name>.<part>; files starting with "_" are shared pieces (layouts, macros).
PARTS = ("subject.txt", "txt", "html")
_LANG_RE = re.compile(r"^[a-z]{2,3}$")
# Ways to switch HTML escaping off: with ledger data in the context they would let a debtor
# name inject markup, so `mailer check` refuses them in templates.
_UNESCAPE_RE = re.compile(r"\|\s*safe\b|autoescape\s+false|\bMarkup\b")

# What a broken or misused template raises while rendering: staff can fix all of these.
_TEMPLATE_FAULTS = (TemplateError, TypeError, ValueError, ArithmeticError)


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str  # one line, no control characters
    text: str
    html: str


def _finalize(value: object) -> object:
    # `{{ creditor.phone }}` with no phone would print "None" to a debtor: make it a template
    # error instead, so `mailer check` points at the line that needs an `{% if %}`.
    if value is None:
        raise UndefinedError("this value is empty (None) here: print it inside {% if … %}")
    return value


def _defined(value: Any) -> Any:
    # A filter given an undefined name must fail as "'x' is undefined", not as a type error.
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    return value


class TemplateSet:
    """The template directory: one sandboxed Jinja2 environment per language subdirectory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._environments: dict[str, ImmutableSandboxedEnvironment] = {}

    def languages(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(
            p.name for p in self.directory.iterdir() if p.is_dir() and _LANG_RE.match(p.name)
        )

    def path(self, lang: str, name: str, part: str) -> Path:
        return self.directory / lang / f"{name}.{part}"

    def files(self, lang: str) -> list[Path]:
        """Every template file of ``lang``, shared pieces included."""
        root = self.directory / lang
        if not root.is_dir():
            return []
        return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in {".txt", ".html"})

    def names(self, lang: str) -> list[str]:
        """Names that have at least one part in ``lang`` (shared ``_`` pieces excluded)."""
        found: set[str] = set()
        for path in self.files(lang):
            if path.parent != self.directory / lang or path.name.startswith("_"):
                continue
            for part in PARTS:
                if path.name.endswith(f".{part}"):
                    found.add(path.name.removesuffix(f".{part}"))
                    break
        return sorted(found)

    def pin(self) -> list[tuple[Path, TemplateError]]:
        """Compile every template now, and never read the files again: a file edited later
        changes nothing until a new TemplateSet is loaded (and checked). Returns the files that
        did not compile (the checks report those in use; the others are never rendered)."""
        unusable = []
        for lang in self.languages():
            env = self.environment(lang)
            env.auto_reload = False
            root = self.directory / lang
            for path in self.files(lang):
                try:
                    env.get_template(path.relative_to(root).as_posix())
                except TemplateError as exc:
                    unusable.append((path, exc))
        return unusable

    def environment(self, lang: str) -> ImmutableSandboxedEnvironment:
        """The sandbox for ``lang``: it can load only files under templates/<lang>/."""
        if lang not in self._environments:
            if not _LANG_RE.match(lang):
                raise ValueError(f"not a language code: {lang!r}")
            env = ImmutableSandboxedEnvironment(
                loader=FileSystemLoader(self.directory / lang),
                undefined=StrictUndefined,
                autoescape=select_autoescape(
                    enabled_extensions=("html", "htm"), default_for_string=False, default=False
                ),
                trim_blocks=True,
                lstrip_blocks=True,
                finalize=_finalize,
            )

            def money(amount: object, currency: str = "EUR", lang: str = lang) -> str:
                return format_money(_defined(amount), _defined(currency), lang)

            def date(value: object, lang: str = lang) -> str:
                return format_long_date(_defined(value), lang)

            def percent(value: object, lang: str = lang) -> str:
                return format_percent(_defined(value), lang)

            env.filters.update(money=money, date=date, percent=percent)
            self._environments[lang] = env
        return self._environments[lang]


# --- errors as file:line ---------------------------------------------------------------------


def _location(exc: BaseException, templates: TemplateSet, fallback: Path) -> str:
    if isinstance(exc, TemplateSyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    # Jinja2 rewrites tracebacks so that template frames carry the template file and line.
    root = templates.directory.resolve()
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if Path(frame.filename).resolve().is_relative_to(root):
            return f"{frame.filename}:{frame.lineno}"
    return f"{fallback}:1"


def _message(exc: BaseException) -> str:
    if isinstance(exc, TemplateSyntaxError):
        return f"syntax error: {exc.message}"
    if isinstance(exc, TemplateNotFound):
        return f"template not found: {exc.name}"
    if isinstance(exc, TemplateError):
        return str(exc.message)
    return f"{type(exc).__name__}: {exc}"


def _problem(exc: BaseException, templates: TemplateSet, fallback: Path) -> str:
    return f"{_location(exc, templates, fallback)}: {_message(exc)}"


def _render_part(
    templates: TemplateSet, lang: str, name: str, part: str, context: Mapping[str, Any]
) -> str:
    path = templates.path(lang, name, part)
    try:
        template = templates.environment(lang).get_template(f"{name}.{part}")
        return template.render(context)
    except TemplateNotFound as exc:
        if exc.name == f"{name}.{part}":
            missing = f"{path}:1: missing template (needed for {name!r} in {lang!r})"
            raise ConfigError([missing]) from exc
        raise ConfigError([_problem(exc, templates, path)]) from exc
    except _TEMPLATE_FAULTS as exc:
        raise ConfigError([_problem(exc, templates, path)]) from exc


# --- rendering -------------------------------------------------------------------------------


def one_line(text: str) -> str:
    # Ledger data (a debtor name with CR/LF, a zero-width or bidi character) must never turn
    # into a second header line or a disguised subject: control/format characters become
    # spaces and every run of whitespace, line breaks included, becomes one space.
    if not text.isprintable():  # printable: no control/format characters (most text)
        text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text)
    return " ".join(text.split())


def _tidy_text(text: str) -> str:
    # Optional lines left empty by `{% if %}` must not pile up into holes in the email.
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)) + "\n"


def _with_opt_out_text(text: str, line: str) -> str:
    return f"{text.rstrip()}\n\n{line}\n"


def _with_opt_out_html(html: str, line: str) -> str:
    paragraph = f'<p style="font-size:12px;color:#555555;">{escape(line)}</p>\n'
    end = html.lower().rfind("</body>")
    if end == -1:
        return f"{html.rstrip()}\n{paragraph}"
    return html[:end] + paragraph + html[end:]


def render(
    templates: TemplateSet,
    lang: str,
    name: str,
    context: Mapping[str, Any],
    *,
    opt_out_line: str | None,
) -> RenderedEmail:
    """Subject, text and HTML of template ``name`` in ``lang``; ConfigError (file:line) if broken.

    ``opt_out_line`` (the debtor's profile requires one) is appended to text and HTML here, so
    no template can leave it out.
    """
    subject = one_line(_render_part(templates, lang, name, "subject.txt", context))
    if not subject:
        raise ConfigError([f"{templates.path(lang, name, 'subject.txt')}:1: empty subject"])
    text = _tidy_text(_render_part(templates, lang, name, "txt", context))
    html = _render_part(templates, lang, name, "html", context)
    if opt_out_line:
        text = _with_opt_out_text(text, opt_out_line)
        html = _with_opt_out_html(html, opt_out_line)
    return RenderedEmail(subject=subject, text=text, html=html)


# --- mailer check ----------------------------------------------------------------------------


def _syntax_problems(templates: TemplateSet, lang: str) -> tuple[list[str], set[Path]]:
    problems: list[str] = []
    broken: set[Path] = set()
    env = templates.environment(lang)
    for path in templates.files(lang):
        name = path.relative_to(templates.directory / lang).as_posix()
        try:
            source = path.read_text(encoding="utf-8")
            for lineno, line in enumerate(source.splitlines(), start=1):
                if _UNESCAPE_RE.search(line):
                    problems.append(f"{path}:{lineno}: HTML escaping must stay on (no |safe)")
            env.get_template(name)
            problems.extend(
                f"{path}:{line}: {_NEVER_SHOWN}" for line in _outside_blocks(env, source)
            )
        except TemplateSyntaxError as exc:
            problems.append(_problem(exc, templates, path))
            broken.add(path)
        except (TemplateError, UnicodeDecodeError) as exc:
            problems.append(f"{path}:1: {_message(exc)}")
            broken.add(path)
    return problems, broken


_NEVER_SHOWN = "text outside a block is never shown"


def _outside_blocks(env: ImmutableSandboxedEnvironment, source: str) -> list[int]:
    """Lines where a child template (one that ``{% extends %}``) writes outside its blocks.

    Jinja2 renders only the parent's layout with the child's blocks in it: whatever the child
    writes after its ``{% extends %}`` and outside ``{% block %}`` silently disappears.
    Whitespace and comments are fine; so are ``{% set %}``, ``{% import %}`` and macros.
    """
    body = env.parse(source).body
    start = next((i for i, node in enumerate(body) if isinstance(node, nodes.Extends)), None)
    if start is None:
        return []
    lines: list[int] = []
    for node in body[start + 1 :]:
        lines.extend(_output_lines(node))
    return lines


def _output_lines(node: nodes.Node) -> list[int]:
    """The line of each non-blank output in ``node``, blocks and macro bodies left out."""
    if isinstance(node, nodes.Block | nodes.Macro):
        return []  # a block is the child's to fill; a macro writes only where it is called
    if isinstance(node, nodes.Output):
        for item in node.nodes:
            if not isinstance(item, nodes.TemplateData):
                return [item.lineno]
            text = item.data
            if text.strip():
                # lineno is where the data starts: count the blank lines before the text.
                blank = text[: len(text) - len(text.lstrip())]
                return [item.lineno + blank.count("\n")]
        return []
    return [line for child in node.iter_child_nodes() for line in _output_lines(child)]


def check_templates(
    templates: TemplateSet,
    campaigns: Mapping[str, Campaign],
    sample_contexts: Iterable[Mapping[str, Any]],
    others: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> list[str]:
    """Every problem with the templates, as ``file:line: message``; empty when all is well.

    Checks that each campaign step has every part in each language (es and en at least), that
    every file compiles, and that each step template renders against each sample context
    (undefined names, sandbox refusals, empty subjects). ``others`` names templates mailer
    uses outside the campaigns (instalment reminders), each with the contexts it is rendered
    against instead of the sample ones: they too must exist in every language.
    """
    others = others or {}
    problems: list[str] = []
    langs = sorted(set(REQUIRED_LANGS) | set(templates.languages()))
    broken: set[Path] = set()
    for lang in langs:
        if not (templates.directory / lang).is_dir():
            problems.append(f"{templates.directory / lang}:1: missing language directory")
            continue
        found, bad = _syntax_problems(templates, lang)
        problems.extend(found)
        broken |= bad

    wanted: dict[str, set[str]] = {lang: set(templates.names(lang)) for lang in langs}
    for campaign in campaigns.values():
        source = Path(campaign.source) if campaign.source else Path(f"{campaign.name}.toml")
        for step in campaign.steps:
            for lang in langs:
                wanted[lang].add(step.template)
                missing = [
                    str(templates.path(lang, step.template, part))
                    for part in PARTS
                    if not templates.path(lang, step.template, part).is_file()
                ]
                if missing:
                    line = step_line(source, step.index) if campaign.source else 1
                    problems.append(
                        f"{source}:{line}: step {step.name!r}: missing {', '.join(missing)}"
                    )
    for name in sorted(others):
        for lang in langs:
            wanted[lang].add(name)
            problems.extend(
                f"{templates.path(lang, name, part)}:1: missing template (mailer needs {name!r})"
                for part in PARTS
                if not templates.path(lang, name, part).is_file()
            )

    contexts = list(sample_contexts)
    for lang in langs:
        for name in sorted(wanted[lang]):
            for part in PARTS:
                path = templates.path(lang, name, part)
                if not path.is_file() or path in broken:
                    continue
                for context in others.get(name, contexts):
                    try:
                        out = _render_part(templates, lang, name, part, context)
                    except ConfigError as exc:
                        problems.extend(exc.problems)
                        continue
                    if part == "subject.txt" and not one_line(out):
                        problems.append(f"{path}:1: empty subject")
    # The same mistake shows up once per sample context: report it once.
    return list(dict.fromkeys(problems))
