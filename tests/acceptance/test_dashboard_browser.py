"""The dashboard in a real headless browser (Debian's chromium driven by Playwright).

Screenshots land in test-artifacts/ (SAGAFLOW_TEST_ARTIFACTS overrides the folder).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from sagaflow.devstack.processes import WorkerSpec
from tests.conftest import ROOT, Stack

CHROMIUM = os.environ.get("SAGAFLOW_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("SAGAFLOW_TEST_ARTIFACTS", ROOT / "test-artifacts"))
# Without the networking flags chromium keeps trying to reach Google's hosts from a closed box.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists() and shutil.which(CHROMIUM) is None:
        pytest.fail(
            f"the browser tests need chromium at {CHROMIUM} (Debian: apt-get install chromium; "
            "or set SAGAFLOW_TEST_CHROMIUM)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    # expect() has its own 5 s default: too short for a navigation on a busy 2-vCPU machine.
    expect.set_options(timeout=15_000)
    try:
        yield page
    finally:
        context.close()


def test_follow_a_failed_saga_from_the_list_to_its_compensations(
    stack: Stack,
    dashboard_process: tuple[str, subprocess.Popen[str]],
    page: Page,
) -> None:
    url, _ = dashboard_process
    completed = stack.start("trip", {})
    failed = stack.start("trip", {"fail_at": ["a3"]})
    stack.wait([completed, failed])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    page.goto(url)
    expect(page.locator(f'tr[data-saga="{failed}"]')).to_contain_text("failed")
    expect(page.locator(f'tr[data-saga="{completed}"]')).to_contain_text("completed")
    page.screenshot(path=str(ARTIFACTS / f"dashboard-list-{stack.name}.png"), full_page=True)

    # filter by state with the card, then open the failed saga from the list
    page.locator('a.card[data-state="failed"]').click()
    expect(page).to_have_url(f"{url}/?state=failed")
    expect(page.locator(f'tr[data-saga="{completed}"]')).to_have_count(0)
    page.locator(f'tr[data-saga="{failed}"] a').click()

    expect(page).to_have_url(f"{url}/sagas/{failed}")
    expect(page.locator("#saga-state")).to_have_text("failed")
    expect(page.locator("#saga-error")).to_contain_text("StepRefused")
    expect(page.locator('tr.step-action[data-step="a3"]')).to_contain_text("failed")

    # the compensations: b2 and a1 undone, a3 (which failed) and b4 (never ran) not
    compensations = page.locator("tr.step-comp")
    expect(compensations).to_have_count(2)
    assert [compensations.nth(i).get_attribute("data-compensation") for i in range(2)] == [
        "a1",
        "b2",
    ]
    for row in ("a1", "b2"):
        expect(page.locator(f'tr.step-comp[data-compensation="{row}"]')).to_contain_text(
            "compensated"
        )
    # ...and they ran in reverse order: b2 first, then a1, on the history and on the timeline
    undone = page.locator('#history tr[data-event="step_compensated"] td:nth-child(4)')
    assert undone.all_inner_texts() == ["b2", "a1"]
    left = {
        name: float(
            page.locator(f'tr.step-comp[data-compensation="{name}"] .bar')
            .evaluate("bar => bar.style.left")
            .rstrip("%")
        )
        for name in ("a1", "b2")
    }
    assert left["b2"] <= left["a1"], left
    page.screenshot(path=str(ARTIFACTS / f"dashboard-saga-{stack.name}.png"), full_page=True)
    assert (ARTIFACTS / f"dashboard-saga-{stack.name}.png").stat().st_size > 10_000


ALARM_RED = "rgb(164, 14, 38)"  # --alarm in base.html


def test_the_saga_page_says_why_a_saga_stopped_and_what_to_do(
    stack: Stack,
    dashboard_process: tuple[str, subprocess.Popen[str]],
    page: Page,
) -> None:
    url, _ = dashboard_process
    saga_id = stack.start(
        "trip", {"fail_at": ["a3"], "fail_compensation_at": ["b2"], "note": "it's"}
    )
    assert stack.wait_one(saga_id).state.value == "compensation_failed"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{url}/sagas/{saga_id}")
    expect(page).to_have_title(f"trip {saga_id} · sagaflow")

    # the state, and the step whose compensation failed, in red
    state = page.locator("#saga-state")
    expect(state).to_have_text("compensation_failed")
    assert state.evaluate("e => getComputedStyle(e).backgroundColor") == ALARM_RED
    badge = page.locator('tr.step-action[data-step="b2"] .badge')
    expect(badge).to_have_text("compensation_failed")
    assert badge.evaluate("e => getComputedStyle(e).backgroundColor") == ALARM_RED
    # not "finished": it waits for an operator, and the page says what to run
    times = page.locator("#saga-times")
    expect(times).to_contain_text("waiting for an operator")
    expect(times).not_to_contain_text("finished after")
    expect(times).to_contain_text(" UTC")
    next_actions = page.locator("#next-actions")
    expect(next_actions).to_contain_text(f"sagaflow retry {saga_id}")
    expect(next_actions).to_contain_text(f"sagaflow mark-compensated {saga_id} b2 --reason")
    expect(next_actions).to_contain_text("read-only")
    # the input, readable: indented JSON, text as it was sent (no \u0027 escapes)
    saga_input = page.locator("#saga-input pre")
    expect(saga_input).to_contain_text('"note": "it\'s"')
    expect(saga_input).to_contain_text('"fail_at": [\n    "a3"\n  ]')
    # the failed compensation's traceback as text, under its error
    comp_error = page.locator('tr.step-comp[data-compensation="b2"]')
    comp_error.locator("details.error-details summary").click()
    expect(comp_error.locator("pre.traceback")).to_contain_text("Traceback (most recent call last)")
    # history times carry their date and zone
    first = page.locator("#history time").first
    expect(first).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC$"))
    page.screenshot(path=str(ARTIFACTS / f"dashboard-why-{stack.name}.png"), full_page=True)


def test_a_running_saga_and_the_list_update_live_and_fit_a_phone(
    stack: Stack,
    dashboard_process: tuple[str, subprocess.Popen[str]],
    browser: Browser,
) -> None:
    url, _ = dashboard_process
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = phone.new_page()
        page.set_default_timeout(30_000)
        saga_id = stack.start("detour", {})
        stack.wait_dispatched(saga_id, 1)  # l2 waits on the queue "later": nobody consumes it
        page.goto(f"{url}/sagas/{saga_id}")
        expect(page.locator("#saga-state")).to_have_text("pending")
        waiting = page.locator("#saga-waiting")
        expect(waiting).to_contain_text("l2")
        expect(waiting).to_contain_text("later")  # the queue it waits on
        expect(page.locator("#next-actions")).to_contain_text(f"sagaflow cancel {saga_id}")
        # nothing wider than the phone's screen but the tables, which scroll on their own
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"the page is {overflow}px wider than the phone"
        page.screenshot(path=str(ARTIFACTS / f"dashboard-phone-{stack.name}.png"), full_page=True)

        # the saga moves on its own once its queue has a worker: the open page follows it
        later = stack.start_worker(WorkerSpec("later", "tests.services", ["later"]))
        try:
            expect(page.locator("#saga-state")).to_have_text("completed", timeout=60_000)
        finally:
            stack.group.stop_worker(later)
        expect(page.locator("#saga-waiting")).to_have_count(0)

        # the list shows a saga started after it was opened, without a reload by hand
        page.goto(url)
        expect(page.locator("#live")).to_be_visible()
        newer = stack.start("trip", {})
        expect(page.locator(f'tr[data-saga="{newer}"]')).to_have_count(1, timeout=60_000)
    finally:
        phone.close()
