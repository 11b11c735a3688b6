"""The dashboard in a real headless browser (Debian's chromium driven by Playwright).

Screenshots land in test-artifacts/ (SAGAFLOW_TEST_ARTIFACTS overrides the folder).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

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
