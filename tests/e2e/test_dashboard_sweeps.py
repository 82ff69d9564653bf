"""The sweep pages and the compare view in a real headless browser against ``up``.

A finished 3-trial grid: the sweeps list names it and its best trial, the sweep page shows
every trial with its parameters and metric, marks the best, draws the parameter against
the metric, and links to the compare view, which overlays the trials' loss curves; the
best trial's page shows its evaluation scores. A job reported to MLflow links its run on
its page. Every view passes the accessibility audit, with no console error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.live_service import API, Service, start_service, stop_service
from tests.e2e.test_dashboard import Console, accessible, browser, sync_api
from tests.runner.mlflow_rest import mlflow_rest_server

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


def test_a_job_page_links_its_tracker_run(tmp_path: Path, browser: Any) -> None:
    with mlflow_rest_server() as (uri, mlflow):
        process, base = start_service(
            tmp_path,
            "--simulate-step-seconds",
            "0.02",
            env_extra={"MLFLOW_TRACKING_URI": uri},
        )
        service = Service(process, base, tmp_path / "outputs")
        try:
            job = {
                "job_id": "dash-linked",
                "data_path": "d#100",
                "model_path": "Qwen/Qwen2.5-0.5B",
                "output_dir": "output/linked",
                "train_args": {"max_steps": 10, "report_to": ["mlflow"]},
            }
            assert service.http.post("/jobs", json=job).status_code == 201
            service.wait_status("dash-linked", "succeeded")
            url = service.http.get("/jobs/dash-linked").json()["tracker_urls"]["mlflow"]
            root = str(service.http.base_url).removesuffix(API + "/").removesuffix(API)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            console = Console(page)
            page.goto(f"{root}/#/job/dash-linked")
            link = page.locator("#fact-tracker").get_by_role("link", name="mlflow")
            sync_api.expect(link).to_have_attribute("href", url)
            sync_api.expect(link).to_have_attribute("rel", "noopener noreferrer")
            accessible(page, "job page with a tracker link")
            context.close()
            assert console.errors == []
        finally:
            service.http.close()
            stderr = stop_service(process)
            assert process.returncode == 0, stderr[-3000:]
    assert url.endswith(f"/runs/{mlflow.runs[0]['info']['run_id']}")
