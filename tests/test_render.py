"""Rendering: shipped templates for every step, locale formats, sandbox, escaping, check output."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from mailer.domain.campaign import load_campaign, load_campaigns, step_line
from mailer.domain.instalments import TEMPLATES as INSTALMENT_TEMPLATES
from mailer.domain.models import (
    DEFAULT_PROFILES,
    Campaign,
    Case,
    Contact,
    Creditor,
    Debtor,
    DebtorKind,
    Identity,
    Invoice,
    Payment,
    SmtpSecurity,
    Step,
)
from mailer.errors import ConfigError
from mailer.render import (
    PreviousMessage,
    TemplateSet,
    build_context,
    check_templates,
    opt_out_line,
    render,
)
from mailer.render_format import format_long_date, format_money, format_percent

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = TemplateSet(ROOT / "templates")
CAMPAIGNS = load_campaigns(ROOT / "campaigns")
TODAY = date(2025, 7, 21)

CREDITOR = Creditor(
    legal_name="Talleres Ejemplo, S.L.",
    tax_id="B12345678",
    address="Calle Mayor 1, 28013 Madrid",
    country="ES",
    timezone="Europe/Madrid",
    iban="ES91 2100 0418 4502 0005 1332",
    bic="CAIXESBBXXX",
    payment_link_template="https://pay.example/{invoice}?amount={amount}",
)
IDENTITY = Identity(
    name="billing",
    address="cobros@talleres.example",
    display_name="Ana García",
    smtp_host="smtp.example",
    smtp_port=587,
    smtp_security=SmtpSecurity.STARTTLS,
    smtp_user=None,
    password_env=None,
    password_file=None,
    imap_host=None,
    imap_port=993,
    imap_security=SmtpSecurity.TLS,
    imap_user=None,
)


def make_case(
    kind: DebtorKind = DebtorKind.BUSINESS,
    lang: str = "es",
    count: int = 1,
    name: str = "Construcciones Pérez, S.L.",
    number: str = "F-2025-{i:03d}",
) -> Case:
    debtor = Debtor(
        id="D1",
        name=name,
        kind=kind,
        lang=lang,
        country="ES",
        region="MD",
        timezone="Europe/Madrid",
        contacts=(Contact("admin@perez.example"),),
    )
    invoices = tuple(
        Invoice(
            number=number.format(i=i),
            debtor_id="D1",
            currency="EUR",
            amount=Decimal("1210.00"),
            issue_date=date(2025, 4, 15),
            due_date=date(2025, 5, 15 + i),
            # The second invoice is partly paid, to show paid and outstanding apart.
            payments=(Payment(number.format(i=i), date(2025, 5, 1), Decimal("110.00")),)
            if i == 2
            else (),
        )
        for i in range(1, count + 1)
    )
    return Case(id=1, debtor=debtor, invoices=invoices)


def step_of(kind: DebtorKind, name: str) -> Step:
    return next(s for s in CAMPAIGNS[kind.value].steps if s.name == name)


def context_for(case: Case, step_name: str = "firm", **kwargs: Any) -> dict[str, Any]:
    step = step_of(case.debtor.kind, step_name)
    previous = [PreviousMessage(date(2025, 6, 2), "Factura pendiente")]
    return build_context(case, step, CREDITOR, IDENTITY, TODAY, previous, **kwargs)


def render_case(case: Case, step_name: str) -> tuple[dict[str, Any], Any]:
    kind, lang = case.debtor.kind, case.debtor.lang
    context = context_for(case, step_name)
    line = opt_out_line(lang) if DEFAULT_PROFILES[kind].opt_out_line else None
    return context, render(TEMPLATES, lang, step_name, context, opt_out_line=line)


# --- formats -----------------------------------------------------------------------------------


def test_locale_formats() -> None:
    assert format_money(Decimal("1210"), "EUR", "es") == "1.210,00 €"
    assert format_money(Decimal("1210"), "EUR", "en") == "€1,210.00"
    assert format_long_date(date(2025, 5, 15), "es") == "15 de mayo de 2025"
    assert format_long_date(date(2025, 5, 15), "en") == "15 May 2025"
    assert format_percent(Decimal("10.15"), "es") == "10,15 %"
    assert format_percent(Decimal("10.15"), "en") == "10.15%"
    with pytest.raises(TypeError):
        format_money(1210.0, "EUR", "es")  # floats never reach an invoice amount


def test_rendered_email_uses_debtor_locale() -> None:
    _, es = render_case(make_case(lang="es"), "friendly")
    assert "1.210,00 €" in es.text and "1.210,00 €" in es.html
    assert "16 de mayo de 2025" in es.text and "16 de mayo de 2025" in es.html
    _, en = render_case(make_case(lang="en"), "friendly")
    assert "€1,210.00" in en.text and "16 May 2025" in en.html


# --- every shipped template --------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(DebtorKind))
@pytest.mark.parametrize("lang", ["es", "en"])
@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("step_name", [s.name for s in CAMPAIGNS["business"].steps])
def test_shipped_templates_render(kind: DebtorKind, lang: str, count: int, step_name: str) -> None:
    case = make_case(kind, lang, count)
    context, email = render_case(case, step_name)
    assert email.subject and "\n" not in email.subject
    assert "F-2025-001" in email.subject
    money = format_money(Decimal("1100.00"), "EUR", lang)
    for invoice in case.invoices:
        assert invoice.number in email.text and invoice.number in email.html
    if count > 1:
        assert money in email.text and money in email.html  # the partly paid invoice's balance
    total = format_money(context["totals"]["balance"], "EUR", lang)
    assert total in email.text and total in email.html
    assert CREDITOR.iban is not None and CREDITOR.iban in email.text
    assert "None" not in email.text and "None" not in email.html
    assert email.html.lstrip().startswith("<!DOCTYPE html>")
    line = opt_out_line(lang)
    if kind is DebtorKind.CONSUMER:
        assert email.text.rstrip().endswith(line)
        assert line in email.html and email.html.index(line) < email.html.index("</body>")
    else:
        assert line not in email.text and line not in email.html


@pytest.mark.parametrize("lang", ["es", "en"])
def test_firm_states_interest_and_compensation_for_business_only(lang: str) -> None:
    euro40 = "40 €" if lang == "es" else "€40"
    law = "Ley 3/2004"
    context, business = render_case(make_case(DebtorKind.BUSINESS, lang, 2), "firm")
    interest = format_money(context["totals"]["interest"], "EUR", lang)
    assert context["totals"]["interest"] > 0
    assert context["totals"]["compensation"] == Decimal("80.00")
    for part in (business.text, business.html):
        assert interest in part and euro40 in part and law in part and "2011/7" in part
        assert format_money(Decimal("80.00"), "EUR", lang) in part

    context, consumer = render_case(make_case(DebtorKind.CONSUMER, lang, 2), "firm")
    interest = format_money(context["totals"]["interest"], "EUR", lang)
    assert context["totals"]["compensation"] == Decimal("0.00")
    for part in (consumer.text, consumer.html):
        assert interest in part and "1108" in part
        assert euro40 not in part and law not in part


@pytest.mark.parametrize("lang", ["es", "en"])
def test_final_notice_names_the_date_and_procedure(lang: str) -> None:
    context, email = render_case(make_case(lang=lang), "final")
    assert format_long_date(context["respond_by"], lang) in email.text
    assert "procedimiento monitorio" in email.text
    assert context["respond_by"] > TODAY


def test_check_passes_on_shipped_templates() -> None:
    contexts = [
        context_for(make_case(kind, lang, count), step.name)
        for kind in DebtorKind
        for lang in ("es", "en")
        for count in (1, 2)
        for step in CAMPAIGNS[kind.value].steps
    ]
    # The instalment templates need an ``instalment``: rendered in tests/test_instalments.py.
    others: dict[str, list[dict[str, Any]]] = {name: [] for name in INSTALMENT_TEMPLATES}
    assert check_templates(TEMPLATES, CAMPAIGNS, contexts, others) == []
    assert TEMPLATES.names("es") == TEMPLATES.names("en")
    steps = {s.template for s in CAMPAIGNS["business"].steps}
    assert set(TEMPLATES.names("es")) == steps | set(INSTALMENT_TEMPLATES)


# --- context -----------------------------------------------------------------------------------


def _plain(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or type(value) in {str, int, bool, Decimal, date}


def test_context_is_plain_values() -> None:
    context = context_for(make_case(count=2), opt_out="x")
    assert _plain(context)
    first, second = context["invoices"]
    assert first["payment_link"] == "https://pay.example/F-2025-001?amount=1210.00"
    assert second["paid"] == Decimal("110.00") and second["balance"] == Decimal("1100.00")
    assert first["days_overdue"] == (TODAY - date(2025, 5, 16)).days
    assert context["totals"]["count"] == 2
    assert context["totals"]["total_due"] == (
        context["totals"]["balance"]
        + context["totals"]["interest"]
        + context["totals"]["compensation"]
    )
    assert context["step"] == {"name": "firm", "index": 3, "number": 4}
    assert context["previous_messages"] == [
        {"date": date(2025, 6, 2), "subject": "Factura pendiente", "sender": ""}
    ]
    assert context["earlier_senders"] == []
    assert context["payment"]["link"] is None  # one link per invoice, none for the whole case


def test_payment_links_are_quoted_and_web_only() -> None:
    context = context_for(make_case(number="A/1 &{i}"))
    assert context["invoices"][0]["payment_link"].startswith("https://pay.example/A%2F1%20%261?")
    case = make_case()
    evil = Invoice(**{**_invoice_fields(case.invoices[0]), "payment_link": "javascript:alert(1)"})
    context = context_for(Case(1, case.debtor, (evil,)))
    assert context["invoices"][0]["payment_link"] is None


def _invoice_fields(invoice: Invoice) -> dict[str, Any]:
    return {f: getattr(invoice, f) for f in Invoice.__dataclass_fields__}


# --- safety ------------------------------------------------------------------------------------


def test_html_autoescape() -> None:
    name = "<script>alert(1)</script>"
    _, email = render_case(make_case(DebtorKind.CONSUMER, "es", name=name), "friendly")
    assert name not in email.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
    assert name in email.text


def test_crlf_in_ledger_data_cannot_make_a_multiline_subject() -> None:
    case = make_case(number="F-{i}\r\nBcc: victim@example.com\n\u2028X")
    _, email = render_case(case, "friendly")
    assert "\r" not in email.subject and "\n" not in email.subject
    assert "\u2028" not in email.subject
    assert "F-1 Bcc: victim@example.com X" in email.subject


def make_set(tmp_path: Path, files: dict[str, str]) -> TemplateSet:
    for name, text in files.items():
        path = tmp_path / "templates" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return TemplateSet(tmp_path / "templates")


def one_step_campaign(tmp_path: Path) -> dict[str, Campaign]:
    path = tmp_path / "mini.toml"
    path.write_text('[[steps]]\nname = "hello"\noffset_days = 1\n', encoding="utf-8")
    return {"mini": load_campaign(path)}


def complete(**overrides: str) -> dict[str, str]:
    files = {
        f"{lang}/hello.{part}": "Hola {{ debtor.name }}\n"
        for lang in ("es", "en")
        for part in ("subject.txt", "txt", "html")
    }
    files.update(overrides)
    return files


def test_subject_from_debtor_name_is_one_line(tmp_path: Path) -> None:
    templates = make_set(tmp_path, complete())
    context = context_for(make_case(name="Evil\r\nBcc: x@example.com"))
    email = render(templates, "es", "hello", context, opt_out_line=None)
    assert email.subject == "Hola Evil Bcc: x@example.com"


def test_sandbox_refuses_python_internals(tmp_path: Path) -> None:
    bad = "line one\n{{ ''.__class__.__mro__[1].__subclasses__() }}\n"
    templates = make_set(tmp_path, complete(**{"es/hello.txt": bad}))
    context = context_for(make_case())
    with pytest.raises(ConfigError) as info:
        render(templates, "es", "hello", context, opt_out_line=None)
    path = templates.path("es", "hello", "txt")
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:2: ") and "unsafe" in problem
    problems = check_templates(templates, one_step_campaign(tmp_path), [context])
    assert problems == [problem]


def test_sandbox_refuses_mutating_the_context(tmp_path: Path) -> None:
    bad = "{{ invoices.append(1) }}{{ debtor.update({'name': 'x'}) }}\n"
    templates = make_set(tmp_path, complete(**{"en/hello.html": bad}))
    problems = check_templates(templates, one_step_campaign(tmp_path), [context_for(make_case())])
    assert len(problems) == 1 and problems[0].startswith(
        f"{templates.path('en', 'hello', 'html')}:1:"
    )


def test_undefined_name_reported_at_its_line(tmp_path: Path) -> None:
    text = "{% extends '_base.txt' %}\n{% block body %}\nHola\n{{ debtor.nmae }}\n{% endblock %}\n"
    templates = make_set(
        tmp_path,
        complete(**{"en/hello.txt": text, "en/_base.txt": "Top\n{% block body %}{% endblock %}\n"}),
    )
    problems = check_templates(
        templates, one_step_campaign(tmp_path), [context_for(make_case()), context_for(make_case())]
    )
    assert problems == [
        f"{templates.path('en', 'hello', 'txt')}:4: 'dict object' has no attribute 'nmae'"
    ]


def test_text_outside_the_blocks_of_a_child_template_is_reported(tmp_path: Path) -> None:
    text = (
        "{% extends '_base.txt' %}\n"
        "{# a comment, a set, an import and a macro are fine #}\n"
        "{% set greeting = 'Hola' %}\n"
        "{% import '_base.txt' as base %}\n"
        "{% macro sign() %}The team{% endmacro %}\n"
        "\n"
        "{% block body %}{{ greeting }} {{ sign() }}{% endblock %}\n"
        "\n"
        "Thank you.\n"
        "{% if debtor %}{{ debtor.name }}{% endif %}\n"
    )
    base = "Top\n{% block body %}{% endblock %}\n"
    templates = make_set(tmp_path, complete(**{"en/hello.txt": text, "en/_base.txt": base}))
    context = context_for(make_case())
    # Jinja2 drops both silently: the debtor would never read them.
    email = render(templates, "en", "hello", context, opt_out_line=None)
    assert "Thank you" not in email.text and "Hola The team" in email.text
    problems = check_templates(templates, one_step_campaign(tmp_path), [context])
    path = templates.path("en", "hello", "txt")
    assert problems == [
        f"{path}:9: text outside a block is never shown",
        f"{path}:10: text outside a block is never shown",
    ]
    # Text before {% extends %} is shown, and a template that extends nothing is all shown.
    fixed = "Dear client,\n" + text.replace("Thank you.\n", "").replace("{% if debtor %}", "{#")
    fixed = fixed.replace("{% endif %}", "#}")
    templates = make_set(tmp_path, complete(**{"en/hello.txt": fixed, "en/_base.txt": base}))
    assert check_templates(templates, one_step_campaign(tmp_path), [context]) == []


def test_undefined_in_filter_and_none_printed(tmp_path: Path) -> None:
    text = "x\n{{ nothing|money }}\n{{ creditor.phone }}\n"
    templates = make_set(tmp_path, complete(**{"es/hello.html": text}))
    problems = check_templates(templates, one_step_campaign(tmp_path), [context_for(make_case())])
    path = templates.path("es", "hello", "html")
    assert problems == [f"{path}:2: 'nothing' is undefined"]
    text = "x\n{{ creditor.phone }}\n"
    templates = make_set(tmp_path, complete(**{"es/hello.html": text}))
    problems = check_templates(templates, one_step_campaign(tmp_path), [context_for(make_case())])
    assert len(problems) == 1 and problems[0].startswith(f"{path}:2: ") and "None" in problems[0]


def test_syntax_error_and_unescape_reported(tmp_path: Path) -> None:
    templates = make_set(
        tmp_path,
        complete(
            **{
                "es/hello.txt": "a\nb\n{% if %}\n",
                "en/hello.html": "<p>\n{{ debtor.name|safe }}</p>\n",
                "es/_partial.txt": "{{ unclosed\n",
            }
        ),
    )
    problems = check_templates(templates, one_step_campaign(tmp_path), [context_for(make_case())])
    es = templates.directory / "es"
    assert (
        f"{es / 'hello.txt'}:3: syntax error: Expected an expression, got 'end of statement block'"
        in problems
    )
    assert any(p.startswith(f"{es / '_partial.txt'}:1: syntax error") for p in problems)
    assert (
        f"{templates.path('en', 'hello', 'html')}:2: HTML escaping must stay on (no |safe)"
        in problems
    )


def test_missing_part_reported_at_campaign_step(tmp_path: Path) -> None:
    files = complete()
    del files["en/hello.subject.txt"]
    templates = make_set(tmp_path, files)
    campaigns = one_step_campaign(tmp_path)
    problems = check_templates(templates, campaigns, [context_for(make_case())])
    source = Path(campaigns["mini"].source)
    assert problems == [
        f"{source}:{step_line(source, 0)}: step 'hello': missing "
        f"{templates.path('en', 'hello', 'subject.txt')}"
    ]
    with pytest.raises(ConfigError):
        render(templates, "en", "hello", context_for(make_case()), opt_out_line=None)


def test_opt_out_added_by_renderer_even_without_body_tag(tmp_path: Path) -> None:
    templates = make_set(tmp_path, complete())
    line = opt_out_line("es")
    email = render(templates, "es", "hello", context_for(make_case()), opt_out_line=line)
    assert email.text.endswith(f"\n\n{line}\n")
    assert email.html.rstrip().endswith("</p>") and "«BAJA»" in email.html
