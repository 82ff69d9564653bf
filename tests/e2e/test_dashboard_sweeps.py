"""The sweep pages and the compare view in a real headless browser against ``up``.

A finished 3-trial grid: the sweeps list names it and its best trial, the sweep page shows
every trial with its parameters and metric, marks the best, draws the parameter against
the metric, and links to the compare view, which overlays the trials' loss curves; the
best trial's page shows its evaluation scores. Every
view passes the accessibility audit, with no console error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_service import API, Service, start_service, stop_service
from tests.e2e.test_dashboard import Console, accessible, browser, sync_api

__all__ = ["browser"]  # the fixture, shared with the dashboard's own tests


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    process, base = start_service(tmp_path, "--simulate-step-seconds", "0.02")
    running = Service(process, base, tmp_path / "outputs")
    try:
        yield running
    finally:
        running.http.close()
        stderr = stop_service(process)
        assert process.returncode == 0, stderr[-3000:]


def test_a_sweep_page_and_the_compare_view(service: Service, browser: Any) -> None:
    http = service.http
    created = http.post(
        "/sweeps",
        json={
            "sweep_id": "dash-sweep",
            "name": "learning rate",
            "base": {
                "data_path": "d#100",
                "model_path": "Qwen/Qwen2.5-0.5B",
                "output_dir": "output/dash",
                "train_args": {"max_steps": 20, "logging_steps": 5},
                "eval": {"datasets": ["gsm8k"]},
            },
            "parameters": {"train_args.learning_rate": {"values": [1e-5, 1e-4, 1e-3]}},
            "max_parallel": 2,
        },
    )
    assert created.status_code == 201, created.text
    service.wait_for(
        "the sweep to finish",
        lambda: http.get("/sweeps/dash-sweep").json()["status"] == "finished",
        timeout=120,
    )
    best = http.get("/sweeps/dash-sweep").json()["best"]
    base = str(http.base_url).removesuffix(API + "/").removesuffix(API)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    console = Console(page)
    expect = sync_api.expect

    page.goto(f"{base}/#/sweeps")
    row = page.locator("table.sweeps tbody tr").first
    expect(row).to_contain_text("dash-sweep")
    expect(row).to_contain_text(best["job_id"])
    expect(row).to_contain_text("100%")
    accessible(page, "sweeps list")

    row.get_by_role("link", name="dash-sweep", exact=True).click()
    expect(page.locator("table.trials tbody tr")).to_have_count(3)
    expect(page.locator("table.trials tr.best")).to_have_attribute("data-trial", str(best["index"]))
    expect(page.locator("div.best")).to_contain_text(f"Best trial: {best['job_id']}")
    expect(page.locator("table.trials thead")).to_contain_text("train_args.learning_rate")
    chart = page.locator('figure[data-chart="param-train_args.learning_rate"]')
    expect(chart).to_have_attribute("data-points", "3")
    expect(page.get_by_role("button", name="Cancel sweep")).to_be_disabled()
    accessible(page, "sweep page")

    # The best trial's page shows its evaluation after training.
    page.goto(f"{base}/#/job/{best['job_id']}")
    expect(page.locator("#fact-eval")).to_contain_text("gsm8k")
    expect(page.locator("#fact-eval")).to_contain_text("-merged")  # the model evaluated
    page.goto(f"{base}/#/sweep/dash-sweep")
    compare = page.get_by_role("link", name="Compare loss curves")
    expect(compare).to_have_attribute("href", re.compile(r"jobs=dash-sweep-t0,"))
    compare.click()
    figure = page.locator('figure[data-chart="compare"]')
    expect(figure).to_have_attribute("data-series", "3")
    expect(page.locator("ul.legend li")).to_have_count(3)
    expect(figure.locator("canvas")).to_have_count(1)
    accessible(page, "compare view")
    context.close()
    assert console.errors == []
