"""The web view in a real headless Chromium, its security, and the shareable report, on SQLite and PostgreSQL.

Two batches made over real HTTP with the fake API: one run to completion (some lines fail on purpose),
one submitted and left in progress (no worker sends it).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import httpx
import orjson
import pytest

from pipeline.fakeapi import FakeServer
from pipeline.settings import Settings
from pipeline.store import batches
from pipeline.store.db import open_database
from tests.conftest import invoke
from tests.helpers import batch_of, chat_line, db_rows, status_of, write_jsonl
from tests.ui_helpers import artifacts_dir, chromium, ui_server

pytestmark = pytest.mark.integration

FAIL = 'fake:{"status": 400, "code": "context_length_exceeded", "message": "too long"}'
ANSWER = "The answer to question 3, plainly."
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@pytest.fixture
def two_batches(
    database_url: str, fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, str]:
    """(a completed batch with 4 failed rows, a batch in progress with 20 queued rows)."""
    monkeypatch.setenv("PIPELINE_DATABASE_URL", database_url)
    lines = [chat_line(f"q-{i}", FAIL if i % 7 == 0 else f"question {i}") for i in range(24)]
    lines[3] = chat_line("q-3", "fake:" + orjson.dumps({"content": ANSWER}).decode())
    done = batch_of(
        invoke("run", str(write_jsonl(tmp_path / "done.jsonl", lines)), "--base-url", fake.url).stdout
    )
    waiting = [chat_line(f"w-{i}", f"later {i}") for i in range(20)]
    running = batch_of(invoke("submit", str(write_jsonl(tmp_path / "wait.jsonl", waiting))).stdout)
    return done, running


def test_the_page_shows_batches_charts_failed_rows_and_answers_and_stays_local(
    two_batches: tuple[str, str], database_url: str, tmp_path: Path
) -> None:
    done, running = two_batches
    rows = db_rows(done)
    failed = sorted(cid for cid, r in rows.items() if r["request"].status == "failed")
    assert len(failed) == 4
    shots = artifacts_dir(tmp_path, "ui")
    requested: list[str] = []
    with ui_server(database_url) as server, chromium() as browser:
        page = browser.new_page(viewport={"width": 1300, "height": 1200})
        page.on("request", lambda r: requested.append(r.url))
        page.goto(f"{server.base}/?token={server.token}")
        page.wait_for_selector(f"a.batch-id:text-is('{running}')")
        assert {done, running} <= set(page.locator("a.batch-id").all_inner_texts())
        page.screenshot(path=str(shots / "batches.png"), full_page=True)

        page.goto(f"{server.base}/#/batch/{done}")
        page.wait_for_selector("svg.chart circle.pt")
        assert page.locator("svg.chart").count() >= 5
        assert (
            page.locator("svg.chart circle.pt").count() > 0 and page.locator("svg.chart rect.bar").count() > 0
        )
        assert page.locator(".count-failed").inner_text() == "4"
        page.screenshot(path=str(shots / "batch.png"), full_page=True)

        page.goto(f"{server.base}/#/batch/{done}/rows?status=failed")
        page.wait_for_selector("table.rows a.row-link")
        assert sorted(page.locator("table.rows a.row-link").all_inner_texts()) == failed
        page.screenshot(path=str(shots / "rows-failed.png"), full_page=True)

        page.goto(f"{server.base}/#/batch/{done}/row/{rows['q-3']['request'].id}")
        page.wait_for_selector(".answer")
        assert page.locator(".answer").inner_text() == ANSWER == rows["q-3"]["result"].output
        page.screenshot(path=str(shots / "row.png"), full_page=True)

        # Live: the running batch's page follows a change in the database without being reloaded.
        page.goto(f"{server.base}/#/batch/{running}")
        page.wait_for_selector("#live:text-is('live')")
        batches.cancel_batch(open_database(Settings.load().db_url), running)
        page.wait_for_selector("dd .state:text-is('cancelled')", timeout=30_000)
    assert requested and {urlparse(url).hostname for url in requested} <= LOCAL_HOSTS


def test_tokens_actions_and_cross_site_posts(two_batches: tuple[str, str], database_url: str) -> None:
    done, _ = two_batches
    refused = invoke("ui", "--host", "0.0.0.0", "--no-token")
    assert refused.exit_code == 2 and "without a token" in refused.stderr
    with ui_server(database_url) as server:
        assert httpx.get(f"{server.base}/api/batches").status_code == 403  # no token
        header = {"Authorization": f"token {server.token}"}
        assert httpx.get(f"{server.base}/api/batches", headers=header).status_code == 200
        read_only = httpx.post(
            f"{server.base}/api/batches/{done}/priority", json={"priority": 5}, headers=header
        )
        assert read_only.status_code == 403 and "read-only" in read_only.text
    with (
        ui_server(database_url, "--allow-actions") as server,
        httpx.Client(base_url=server.base, follow_redirects=True) as browser,
    ):
        assert browser.get(f"/?token={server.token}").status_code == 200  # redirected, with a session cookie
        csrf = browser.get("/api/session").json()["csrf"]
        url = f"/api/batches/{done}/priority"
        for headers in (
            {"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
            {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"},
            {"Origin": server.base},  # no CSRF token
        ):
            assert browser.post(url, json={"priority": 5}, headers=headers).status_code == 403
            assert status_of(done)["priority"] == 1
        same_site = {"X-CSRF-Token": csrf, "Origin": server.base, "Sec-Fetch-Site": "same-origin"}
        assert browser.post(url, json={"priority": 5}, headers=same_site).status_code == 200
        assert status_of(done)["priority"] == 5


def test_the_report_opens_offline_with_the_totals_of_status(
    two_batches: tuple[str, str], tmp_path: Path
) -> None:
    done, _ = two_batches
    out = tmp_path / "report.html"
    assert invoke("report", done, "-o", str(out)).exit_code == 0
    status = status_of(done)
    requested: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1300, "height": 1200})
        page.on("request", lambda r: requested.append(r.url))
        page.goto(out.as_uri())
        page.wait_for_selector("svg.chart circle.pt")
        page.screenshot(path=str(artifacts_dir(tmp_path, "report") / "report.png"), full_page=True)
        for key in ("total", "succeeded", "failed", "cancelled", "queued", "running"):
            assert page.locator(f".count-{key}").inner_text().replace(",", "") == str(status[key])
        assert page.locator(".cost").inner_text() == f"${status['cost_usd']:.4f}"
    assert requested == [out.as_uri()]
