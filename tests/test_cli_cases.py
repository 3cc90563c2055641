"""`mailer review`, `mailer case` and `mailer resolve` on a case driven through real servers."""

from __future__ import annotations

import asyncio

from click.testing import CliRunner
from test_watcher import BILLING, Office, answer, app, case_row, sent_to

from mailer.app import App
from mailer.cli import main
from mailer.localservers import LocalMailServers, deliver

__all__ = ["app"]  # the fixture, shared with test_watcher


def run(app: App, *args: str) -> str:
    result = CliRunner(env={"COLUMNS": "250"}).invoke(
        main, ["--config", str(app.settings.source), "--now", "2026-01-08T10:00:00+00:00", *args]
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_review_case_and_resolve(app: App, servers: LocalMailServers) -> None:
    inbox = servers.mailbox_path(BILLING)

    async def scenario() -> None:
        office = Office(app)
        await office.until_sent("admin@beta.example")
        acme, beta = sent_to(app, "pay@acme.example")[0], sent_to(app, "admin@beta.example")[0]
        deliver(
            inbox,
            answer(
                app,
                acme,
                "pay@acme.example",
                "No estamos de acuerdo con el importe, el trabajo no se terminó.",
                office.now,
            ),
        )
        deliver(
            inbox,
            answer(
                app,
                beta,
                "admin@beta.example",
                "¿Podemos pagarlo en tres plazos?",
                office.now,
            ),
        )
        assert (await office.sync()).stored == 2
        await office.close()

    asyncio.run(scenario())
    queue = run(app, "review")
    assert "disputes the claim" in queue and "asks for more time" in queue
    timeline = run(app, "case", "1")
    assert "friendly to pay@acme.example" in timeline and "human_reply (dispute)" in timeline
    assert "case_review" in timeline

    assert "1 review item(s) closed" in run(app, "resolve", "1", "--stop", "--note", "lawyer")
    assert case_row(app, "D1")[0] == "stopped"
    out = run(app, "resolve", "2", "--promise", "2026-01-20")
    assert "paused until 2026-01-22T23:00:00+00:00" in out  # + 3 grace days, Madrid midnight
    assert case_row(app, "D2") == ("paused", "2026-01-22T23:00:00+00:00")
    assert run(app, "review").strip() == "nothing to review"
    plan = run(app, "resolve", "2", "--instalments", "2", "--every", "30")
    assert "instalment 1: 250.00 due 2026-02-07" in plan and "instalment 2: 250.00" in plan
    assert case_row(app, "D2")[0] == "instalments"
    result = CliRunner().invoke(main, ["--config", str(app.settings.source), "resolve", "2"])
    assert result.exit_code != 0 and "exactly one" in result.output
    kinds = [e["kind"] for e in app.store.events(1)]
    assert "case_resolved" in kinds and kinds.index("case_resolved") > kinds.index("mail_received")
