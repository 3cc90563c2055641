"""The review page in a real headless browser: Debian's chromium-headless-shell, driven by Playwright."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from reviewpage import HARDSHIP, HOSTILE, WEB_PASSWORD, Served, case_state, scene, served

__all__ = ["scene", "served"]  # the fixtures, from reviewpage

CHROMIUM = Path("/usr/bin/chromium-headless-shell")  # scripts/install-mailservers.sh installs it
# Playwright's own browser builds are never downloaded: it drives Debian's, headless.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# CI (MAILER_REQUIRE_MAILENV=1) fails rather than skips without the browser.
REQUIRE = os.environ.get("MAILER_REQUIRE_MAILENV") == "1"


def _unavailable(why: str) -> NoReturn:
    if REQUIRE:
        pytest.fail(f"MAILER_REQUIRE_MAILENV=1 but {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (./run setup installs it)")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (scripts/install-mailservers.sh installs it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()  # cookies of one test only
    opened = context.new_page()
    dialogs: list[str] = []
    # Any alert() would mean a debtor's words ran as script in the page.
    opened.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        yield opened
    finally:
        context.close()
    assert dialogs == []


def log_in(page: Any, served: Served, name: str = "Ana") -> None:
    page.get_by_label("Your name").fill(name)
    page.get_by_label("Password").fill(WEB_PASSWORD)
    page.get_by_role("button", name="Log in").click()


def test_log_in_decide_on_a_reply_and_see_the_case_change(page: Any, served: Served) -> None:
    from playwright.sync_api import expect

    page.goto(served.url + "case/2")
    # No session: sent to the login, which goes back to the case once logged in (a wrong
    # password first does not lose the way back).
    expect(page).to_have_url(served.url + "login?next=/case/2")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong password.")
    log_in(page, served)
    expect(page).to_have_url(served.url + "case/2")
    expect(page.get_by_role("heading", name=re.compile(r"^Case 2 — "))).to_be_visible()
    page.goto(served.url)
    expect(page.get_by_role("heading", name="Review queue (2)")).to_be_visible()

    acme = page.locator("section.review", has=page.get_by_role("link", name="Case 1"))
    beta = page.locator("section.review", has=page.get_by_role("link", name="Case 2"))
    # The debtor's markup is shown as the words they typed, and never runs.
    expect(acme.locator(".reply")).to_contain_text('<script>alert("x")</script><img src=x')
    assert page.locator("main script, main img").count() == 0
    expect(acme).to_contain_text("1,210.00 EUR")
    expect(beta.locator(".reply")).to_have_text(HARDSHIP)
    expect(beta.locator(".intent")).to_have_text("hardship")
    expect(beta).to_contain_text("500.00 EUR")

    beta.get_by_label("Promised to pay on").fill("2026-01-20")
    beta.get_by_role("button", name="Record promise").click()

    expect(page).to_have_url(served.url + "case/2")
    expect(page.locator("#case-status")).to_have_text("paused")
    # Madrid midnight after the 20th plus the 3 days of grace.
    expect(page.get_by_role("status")).to_contain_text("Case 2: paused until 2026-01-23 00:00")
    expect(page.locator("tr.event.case_resolved")).to_have_count(1)
    expect(page.locator("tr.event.case_resolved")).to_contain_text("Ana (web)")
    expect(page.locator("section.review")).to_have_count(0)  # nothing left to review here

    page.get_by_role("link", name="Review queue").click()
    expect(page.get_by_role("heading", name="Review queue (1)")).to_be_visible()
    expect(page.get_by_role("link", name="Case 2")).to_have_count(0)
    assert case_state(served.store, 2)[:2] == ("paused", 0)
    resolved = [e for e in served.store.events(2) if e["kind"] == "case_resolved"]
    assert [(e["data"]["by"], e["data"]["how"]) for e in resolved] == [("Ana (web)", "promise")]
    assert HOSTILE not in page.content()


def test_instalments_from_the_case_page_then_log_out(page: Any, served: Served) -> None:
    from playwright.sync_api import expect

    page.goto(served.url)
    log_in(page, served, "Bea")
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["mailer_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # out of reach of any script in the page

    page.get_by_role("link", name="Case 1").click()
    expect(page.get_by_role("heading", name="Case 1 — Acme S.L.")).to_be_visible()
    page.get_by_label("instalments").fill("2")
    page.get_by_label("every").fill("15")
    page.get_by_role("button", name="Agree instalments").click()
    expect(page.get_by_role("status")).to_contain_text(
        "605.00 due 2026-01-23, 605.00 due 2026-02-07"
    )
    expect(page.locator("#case-status")).to_have_text("instalments")
    expect(page.locator("tr.event.instalments_agreed")).to_have_count(1)

    page.get_by_role("link", name="Identities").click()
    expect(page.locator("#identity-cobros")).to_be_visible()

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(served.url + "login")
    page.goto(served.url + "case/1")
    expect(page).to_have_url(served.url + "login?next=/case/1")


def test_a_form_on_another_site_cannot_decide(page: Any, served: Served) -> None:
    from playwright.sync_api import expect

    page.goto(served.url)
    log_in(page, served)
    expect(page.get_by_role("heading", name="Review queue (2)")).to_be_visible()
    before = case_state(served.store, 2)
    # A page elsewhere, opened in the same browser while logged in, posts a decision.
    page.set_content(
        f'<form method="post" action="{served.url}case/2/decide">'
        '<input type="hidden" name="action" value="stop"><button>Claim your prize</button></form>'
    )
    with page.expect_response(f"{served.url}case/2/decide") as answer:
        page.get_by_role("button", name="Claim your prize").click()
    assert answer.value.status == 403
    expect(page.get_by_role("heading", name="Refused.")).to_be_visible()
    assert case_state(served.store, 2) == before
