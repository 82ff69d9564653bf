"""The dashboard's Usage page in a real headless browser, on ``up --auth required``.

alice's job runs to its end; on her Usage page the per-day chart has today's bar and the
table her row; bob's page, with his key, has neither (the API filters by key). The GPU page
tells bob a GPU is held by another owner's job without naming it. The page passes the
accessibility audit, and no console error is raised.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from tests.e2e.live_service import API, issue_key, start_service, stop_service
from tests.e2e.test_dashboard import accessible, browser, sign_in, sync_api

__all__ = ["browser"]  # the fixture, shared with the dashboard's other browser tests

LONG = {"data_path": "d#100000", "model_path": "m", "gpu_count": 1}


def _wait_status(base: str, secret: str, job_id: str, wanted: str) -> None:
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=base + API, headers=headers, timeout=10) as http:
        for _ in range(600):
            if http.get(f"/jobs/{job_id}/status").json().get("status") == wanted:
                return
            time.sleep(0.1)  # a real service: poll its answer
    raise AssertionError(f"{job_id} never reached {wanted}")


def test_usage_page_charts_own_gpu_hours_per_day(browser: Any, tmp_path: Path) -> None:
    process, base = start_service(
        tmp_path, "--auth", "required", "--simulate-step-seconds", "0.05", "--stop-jobs-on-exit"
    )
    expect = sync_api.expect
    try:
        alice = issue_key(tmp_path, "alice", "user")
        bob = issue_key(tmp_path, "bob", "user")
        answer = httpx.post(
            f"{base}{API}/jobs",
            json={"data_path": "d#40", "model_path": "m", "job_id": "alice-short"},
            headers={"Authorization": f"Bearer {alice}"},
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
        _wait_status(base, alice, "alice-short", "succeeded")
        answer = httpx.post(
            f"{base}{API}/jobs",
            json={**LONG, "job_id": "alice-long"},
            headers={"Authorization": f"Bearer {alice}"},
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
        _wait_status(base, alice, "alice-long", "running")

        ctx, page, console = sign_in(browser, f"{base}/#/usage", alice)
        chart = page.locator('figure[data-chart="usage-per-day"]')
        expect(chart).to_have_attribute("data-days", "1")
        expect(page.locator('tr[data-group="alice"]')).to_be_visible()
        page.get_by_label("Group by").select_option("day")
        page.get_by_role("button", name="Show").click()
        today = datetime.now(UTC).date().isoformat()
        expect(page.locator(f'tr[data-group="{today}"]')).to_be_visible()
        accessible(page, "usage page")
        ctx.close()
        assert console.errors == []

        ctx, page, console = sign_in(browser, f"{base}/#/usage", bob)
        expect(page.get_by_text("No GPU time in this window.")).to_be_visible()
        expect(page.locator('figure[data-chart="usage-per-day"]')).to_have_attribute(
            "data-days", "0"
        )
        page.goto(f"{base}/#/gpus")
        expect(page.get_by_text("another owner's job")).to_be_visible()
        assert "alice-long" not in page.content()
        ctx.close()
        assert console.errors == []
    finally:
        stderr = stop_service(process)
    assert process.returncode == 0, stderr[-3000:]
