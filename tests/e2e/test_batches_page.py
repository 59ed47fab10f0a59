"""The batches page (``plugins/medins/ui``) in the Airflow UI of the native topology, in a real browser.

Debian's Chromium, driven by Playwright, signs in through Airflow's own form and opens Browse → Batches
while a ``medins_batch`` run is sending (the sandbox gateway answers slowly, and refuses or loses a
few messages so that every kind of problem request shows). What the page shows is checked against
MariaDB; a screenshot taken during the run goes to ``.airflow-cluster/batches-page.png``, and to
``docs/images/batches-page.png`` (the README's) with ``MEDINS_UPDATE_SCREENSHOT=1``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ROOT
from tests.e2e.conftest import API
from tests.e2e.test_distributed import SANDBOX, trigger, wait
from tests.e2e.test_status_api import db_counts, mariadb, mixed_requests

pytestmark = pytest.mark.distributed

CHROMIUM = Path(os.environ.get("MEDINS_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOT = ROOT / ".airflow-cluster/batches-page.png"
README_SCREENSHOT = ROOT / "docs/images/batches-page.png"
PAGE = f"{API}/plugin/medins-batches"
FRAME = 'iframe[title="Batches"]'
PROBLEMS = ("FAILURE", "REJECTED", "UNKNOWN")
PERSONAL_FIELDS = ("mdtrt_cert_no", "psn_name", "psn_no", "certno")
# Slow enough that the page sees the batch half done, and a few refusals and lost replies.
SLOW_FAULTS = {"latency_ms": 150, "jitter_ms": 20, "business_error": 0.03, "lost_reply": 0.03}


@pytest.fixture(scope="module")
def browser(cluster) -> Iterator[Any]:
    """Start headless Chromium (Debian's package, not a browser Playwright downloads)."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (scripts/setup.sh does).")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, password) -> Iterator[Any]:
    """Return a tab signed in to the Airflow UI as admin, through Airflow's own sign-in form."""
    context = browser.new_context(
        viewport={"width": 1400, "height": 1000}, locale="en-US", timezone_id="Asia/Shanghai"
    )
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(PAGE)
    page.wait_for_url("**/auth/login**")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url("**/plugin/medins-batches**")
    yield page
    context.close()


@pytest.fixture
def slow_gateway(cluster) -> Iterator[None]:
    """Make the sandbox gateway slow and a little faulty; put its faults back as they were."""
    before = requests.get(f"{SANDBOX}/_sandbox/faults", timeout=10).json()
    requests.post(f"{SANDBOX}/_sandbox/faults", json=SLOW_FAULTS, timeout=10).raise_for_status()
    yield
    restore = {name: before[name] for name in SLOW_FAULTS}
    requests.post(f"{SANDBOX}/_sandbox/faults", json=restore, timeout=10).raise_for_status()


def shown_counts(scope: Any) -> dict[str, int]:
    """Return the counts by state a ``.counts`` element of the page shows, checking text and data agree."""
    counts = {}
    for item in scope.locator(".counts .count").all():
        state, count = item.get_attribute("data-state"), int(item.get_attribute("data-count"))
        assert item.inner_text().replace(",", "") == f"{state} {count}"
        counts[state] = count
    return counts


def refreshes(frame: Any) -> int:
    return int(frame.locator("body").get_attribute("data-refreshes") or 0)


def next_refresh(frame: Any, after: int, timeout: float = 60) -> None:
    """Wait until the page has refreshed once more after refresh number ``after``."""
    deadline = time.monotonic() + timeout
    while refreshes(frame) <= after:
        assert time.monotonic() < deadline, "the page stopped refreshing"
        time.sleep(0.2)


def personal_values(task_ids: list[str]) -> dict[str, list[str]]:
    """Return the personal data each request was submitted with, read from MariaDB."""
    marks = ", ".join(["%s"] * len(task_ids))
    values = {}
    for task_id, data in mariadb(
        f"SELECT task_id, data FROM async_task_status WHERE task_id IN ({marks})", *task_ids
    ):
        fields = (json.loads(data).get("request") or {}).get("data") or {}
        # A one-character value ("psn_no": "1" of an invalid request) is no one's personal data.
        values[task_id] = [str(fields[n]) for n in PERSONAL_FIELDS if len(str(fields.get(n) or "")) > 1]
    return values


def test_the_batches_page_follows_a_running_batch_and_shows_what_mariadb_holds(api, page, slow_gateway):
    batch_id = f"page-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    requests_ = mixed_requests(batch_id, per_code=80)  # every interface, up to 80 of each, 8 invalid
    conf = {"requests": requests_, "chunk_size": 50, "concurrency": 2}
    assert trigger(api, "medins_batch", conf, batch_id).status_code == 200
    deadline = time.monotonic() + 180
    while not mariadb("SELECT 1 FROM async_task_status WHERE task_id = %s", batch_id):
        assert time.monotonic() < deadline, "the batch was not registered"
        time.sleep(0.5)

    # Browse -> Batches: the page, framed by the Airflow UI, lists the running batch.
    page.goto(f"{API}/")
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Batches").click()
    frame = page.frame_locator(FRAME)
    row = frame.locator(f'#batches tr[data-batch-id="{batch_id}"]')
    row.wait_for()
    row.locator('a[data-link="batch"]').click()
    frame.locator(f'#batch[data-batch-id="{batch_id}"]').wait_for()
    page.wait_for_url(f"**/plugin/medins-batches/medins/ui/?batch={batch_id}")

    # While it runs: the progress bar moves, and one screenshot is taken half way.
    bar = frame.locator('#batch [role="progressbar"]')
    seen: list[float] = []
    screenshot_taken = False
    deadline = time.monotonic() + 600
    while frame.locator("#batch").get_attribute("data-status") == "RUNNING":
        assert time.monotonic() < deadline, "the page still shows the batch running after 10 minutes"
        before = refreshes(frame)
        percentage = float(bar.get_attribute("aria-valuenow"))
        seen.append(percentage)
        if not screenshot_taken and 30 <= percentage < 90 and frame.locator("#problems tbody tr").count():
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
            screenshot_taken = True
        next_refresh(frame, before)
    assert wait(api, "medins_batch", batch_id, timeout=300) == "success"

    assert any(0 < p < 100 for p in seen), f"the page never showed the batch part done: {seen}"
    assert seen == sorted(seen), "the progress went backwards"
    if not screenshot_taken:
        page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size < 400_000
    if os.environ.get("MEDINS_UPDATE_SCREENSHOT"):
        shutil.copyfile(SCREENSHOT, README_SCREENSHOT)

    # Finished: every number equals a count straight from MariaDB.
    in_db = db_counts("status", batch_id)
    batch = frame.locator("#batch")
    assert batch.get_attribute("data-status") == "DONE"
    assert shown_counts(batch) == in_db
    assert float(bar.get_attribute("aria-valuenow")) == 100.0
    assert sum(in_db.values()) == len(requests_)
    for name in ("total", "current"):
        value = batch.locator(f'[data-tile="{name}"] .value').inner_text()
        assert value.replace(",", "") == str(len(requests_))
    for column, attribute in (("api_code", "api-code"), ("org_code", "org-code")):
        for code, count in db_counts(column, batch_id).items():
            on_page = batch.locator(f'tr[data-{attribute}="{code or "(none)"}"]').get_attribute("data-total")
            assert on_page == str(count), (column, code)

    problems = frame.locator("#problems")
    problem_ids = [
        task_id
        for (task_id,) in mariadb(
            "SELECT task_id FROM async_task_status WHERE batch_id = %s AND kind <> 'batch' "
            "AND status IN ('FAILURE', 'REJECTED', 'UNKNOWN') ORDER BY id DESC",
            batch_id,
        )
    ]
    assert (
        int(problems.get_attribute("data-total"))
        == len(problem_ids)
        == sum(in_db.get(s, 0) for s in PROBLEMS)
    )
    rows = problems.locator("tbody tr")
    shown = [rows.nth(i).get_attribute("data-task-id") for i in range(rows.count())]
    assert shown == problem_ids[: len(shown)] and len(shown) == min(20, len(problem_ids))
    assert {rows.nth(i).get_attribute("data-status") for i in range(rows.count())} >= {"REJECTED"}

    # A rejected request shows its reason; personal data shows masked, never in full.
    rejected = problems.locator(f'tr[data-task-id="{batch_id}-demo-01167"]')
    assert rejected.locator(".reason").inner_text() == "missing required field mdtrt_cert_no"
    text = frame.locator("html").inner_html()
    for task_id, values in personal_values(shown).items():
        for value in values:
            assert value not in text, f"{task_id}: personal data on the page"
        if values:
            assert "*" in problems.locator(f'tr[data-task-id="{task_id}"] .request-data').inner_text()

    # Back to the list: the batch's row holds the same numbers.
    frame.locator('a[data-link="overview"]').click()
    row = frame.locator(f'#batches tr[data-batch-id="{batch_id}"]')
    row.wait_for()
    assert row.get_attribute("data-status") == "DONE"
    assert shown_counts(row) == in_db
    assert float(row.locator('[role="progressbar"]').get_attribute("aria-valuenow")) == 100.0

    # Its links open the DAG run and its mapped chunks in the Airflow UI around the page.
    run_path = f"/dags/medins_batch/runs/{batch_id}"
    assert row.locator('a[data-link="run"]').get_attribute("href") == f"{API}{run_path}"
    ((registered,),) = mariadb("SELECT data FROM async_task_status WHERE task_id = %s", batch_id)
    chunks = row.locator('a[data-link="chunks"]')
    assert chunks.inner_text() == f"Chunks ({json.loads(registered)['chunks']})"
    chunks.click()
    page.wait_for_url(f"**{run_path}/tasks/send_chunk/mapped")
    page.get_by_text("send_chunk").first.wait_for()


def test_the_page_without_an_airflow_session_shows_no_data_and_asks_to_sign_in(browser):
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{API}/medins/ui/")
        page.locator("#problem").wait_for(timeout=30_000)

        assert page.locator("#problem").inner_text().startswith("Your Airflow session has ended.")
        assert page.locator("#main").inner_text() == ""
    finally:
        context.close()
