"""The job page in a real browser: rotated checkpoints are gone, a failure shows its line."""

from __future__ import annotations

from typing import Any

import pytest
from tests.e2e.live_service import API, Service
from tests.e2e.test_dashboard import Console, browser, service  # noqa: F401 - fixtures
from tests.e2e.test_failures import submit

sync_api = pytest.importorskip("playwright.sync_api")


def test_the_job_page_offers_only_checkpoints_on_disk_and_shows_the_failure(
    service: Service,  # noqa: F811 - the fixture
    browser: Any,  # noqa: F811 - the fixture
) -> None:
    base = str(service.http.base_url).removesuffix(API + "/").removesuffix(API)
    submit(service, "rot2", {}, save_total_limit=2, save_steps=2)
    submit(service, "bad2", {"sim.fail": "data_error"})
    service.wait_status("rot2", "succeeded", timeout=120)
    service.wait_status("bad2", "failed", timeout=120)
    service.wait_for(
        "the rotated checkpoints recorded as removed",
        lambda: len(service.http.get("/jobs/rot2").json()["checkpoints"]) == 2,
    )
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    console = Console(page)
    expect = sync_api.expect
    page.goto(f"{base}/#/job/rot2")
    checkpoints = page.locator("code", has_text="/checkpoint-")
    expect(checkpoints).to_have_count(2)
    expect(page.locator("code", has_text="/checkpoint-12")).to_be_visible()
    expect(page.locator("code", has_text="/checkpoint-2")).to_have_count(0)
    page.goto(f"{base}/#/job/bad2")
    expect(page.get_by_role("alert")).to_contain_text("failed (data_error)")
    expect(page.locator("#failure-line")).to_contain_text("The local path does not exist")
    assert console.errors == []
