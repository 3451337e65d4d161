"""The `/ui` page and `/docs` in a real browser: Debian's headless Chromium driven by Playwright
(`executable_path`, no browser download), against the session's Ray Serve app (`serve_app`).

What a person does: fill the form and read the answer (the same label and probabilities as
`POST /predict`), type a bad value and read the API's own field-level message, upload a CSV
and download the predictions (the same as `POST /invocations`), open the API docs. Every
request the browser makes goes to the model server: the pages work offline.

Screenshots go to `$MLOPS_SCREENSHOTS_DIR` (default `reports/screenshots`); `make
docs-screenshots` points it at docs/images to refresh the committed ones.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import shutil
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pandas as pd
import pytest

from ml.data import load_frame
from tests.conftest import REPO_ROOT
from tests.fixtures.ray_serve import ServeApp

pytestmark = pytest.mark.integration
T = TypeVar("T")

# any absolute URL in an attribute or CSS: a page that needs one does not work offline
EXTERNAL_URL = re.compile(
    r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?(?:https?:)?//"""
)


@pytest.fixture(scope="module")
def http(serve_app: ServeApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_app.base_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (Debian's `chromium`, scripts/system-packages.txt)."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    assert executable, "no chromium on PATH: `make setup` installs it (scripts/system-packages.txt)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, serve_app: ServeApp) -> Iterator[Any]:
    """A fresh page; after the test, every request it made must have stayed on the server."""
    context = browser.new_context(
        base_url=serve_app.base_url, accept_downloads=True, viewport={"width": 1280, "height": 900}
    )
    requested: list[str] = []
    context.on("request", lambda request: requested.append(request.url))
    opened = context.new_page()
    yield opened
    context.close()
    elsewhere = [
        url for url in requested if not url.startswith((serve_app.base_url, "blob:", "data:"))
    ]
    assert not elsewhere, f"the page asked another server: {elsewhere}"


@pytest.fixture(scope="module")
def screenshots() -> Path:
    default = Path(os.environ.get("REPORTS_DIR", REPO_ROOT / "reports")) / "screenshots"
    folder = Path(os.environ.get("MLOPS_SCREENSHOTS_DIR", default))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return load_frame("demo").drop(columns=["target"]).iloc[:25].reset_index(drop=True)


def _open_ui(page: Any) -> None:
    page.goto("/ui")
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)


def _fill_record(page: Any, record: dict[str, Any]) -> None:
    for name, value in record.items():
        page.get_by_label(name, exact=True).fill(str(value))


def _record(rows: pd.DataFrame, index: int) -> dict[str, Any]:
    return json.loads(rows.iloc[[index]].to_json(orient="records"))[0]


def test_the_page_shows_the_served_model_its_gate_decision_and_ct(
    page: Any, http: httpx.Client
) -> None:
    overview = http.get("/overview").json()
    _open_ui(page)
    assert page.inner_text("#model-name") == overview["model_name"]
    assert page.inner_text("#model-version") == overview["model_version"]
    promotion = page.inner_text("#promotion")
    assert "decision" in promotion and overview["promotion"]["decision"] in promotion
    holdout = page.inner_text("#holdout")
    for metric, value in overview["holdout"].items():
        assert f"{metric}\t{value:.4f}" in holdout
    windows = page.locator("#quality tbody tr")
    assert windows.count() == len(overview["ct"]["quality"]) == 2
    runs = page.locator("#ct-runs tbody tr")
    if overview["ct"]["runs"]:
        assert runs.count() == len(overview["ct"]["runs"])
        assert overview["ct"]["runs"][0]["outcome"] in runs.first.inner_text()
    else:
        assert runs.count() == 1 and "no CT run recorded yet" in runs.first.inner_text()
    first = overview["features"][0]
    hint = page.locator(f'.field[data-feature="{first["name"]}"] .hint').inner_text()
    assert "training range" in hint
    assert page.inner_text("#row-limit") == str(overview["max_request_rows"])


def test_the_form_answers_as_predict_does(
    page: Any, http: httpx.Client, rows: pd.DataFrame, screenshots: Path
) -> None:
    record = _record(rows, 3)
    expected = http.post("/predict", json=record).json()["predictions"][0]
    _open_ui(page)
    _fill_record(page, record)
    page.click("#score")
    page.wait_for_selector("#answer:not([hidden])")
    assert page.inner_text("#answer-label") == str(expected["label"])
    shown = {
        cells[0]: float(cells[1])
        for cells in (
            [cell.inner_text() for cell in row.locator("td").all()[:2]]
            for row in page.locator("#answer-proba tbody tr").all()
        )
    }
    assert shown == pytest.approx(expected["probabilities"], abs=5e-5)  # shown to 4 places
    page.screenshot(path=str(screenshots / "ui-answer.png"), full_page=True)


def test_a_bad_value_shows_the_apis_field_level_message(
    page: Any, http: httpx.Client, rows: pd.DataFrame, screenshots: Path
) -> None:
    record = _record(rows, 0)
    feature = list(record)[2]
    record[feature] = "twelve"
    rejected = http.post("/predict", json=record)
    assert rejected.status_code == 422
    _open_ui(page)
    _fill_record(page, record)
    page.click("#score")
    page.wait_for_selector("#form-error:not([hidden])")
    assert page.inner_text("#form-error") == rejected.json()["detail"]
    field = page.locator(f'.field[data-feature="{feature}"]')
    assert "invalid" in (field.get_attribute("class") or "")
    assert field.locator(".field-error").inner_text() == rejected.json()["detail"]
    assert page.locator(".field.invalid").count() == 1
    assert page.locator("#answer").is_hidden()
    field.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshots / "ui-error.png"))


def test_a_csv_is_scored_as_invocations_does(
    page: Any, http: httpx.Client, rows: pd.DataFrame, tmp_path: Path
) -> None:
    upload = tmp_path / "rows.csv"
    rows.to_csv(upload, index=False)
    expected = http.post(
        "/invocations", content=upload.read_bytes(), headers={"Content-Type": "text/csv"}
    ).json()["predictions"]
    _open_ui(page)
    page.set_input_files("#csv-file", str(upload))
    page.click("#score-csv")
    page.wait_for_selector("#csv-download:not([hidden])")
    with page.expect_download() as download:
        page.click("#csv-download")
    saved = tmp_path / "downloaded.csv"
    download.value.save_as(saved)
    assert pd.read_csv(saved)["prediction"].tolist() == expected
    assert page.inner_text("#csv-status") == f"{len(rows)} rows of rows.csv scored"

    broken = tmp_path / "broken.csv"
    rows.rename(columns={rows.columns[0]: "no such feature"}).to_csv(broken, index=False)
    refused = http.post(
        "/invocations", content=broken.read_bytes(), headers={"Content-Type": "text/csv"}
    )
    assert refused.status_code == 400
    page.set_input_files("#csv-file", str(broken))
    page.click("#score-csv")
    page.wait_for_selector("#csv-error:not([hidden])")
    assert page.inner_text("#csv-error") == f"broken.csv: {refused.json()['message']}"
    assert page.locator("#csv-download").is_hidden()


@pytest.mark.parametrize("path", ["/ui", "/docs"])
def test_the_pages_name_no_external_url(http: httpx.Client, path: str) -> None:
    html = http.get(path).text
    assert not EXTERNAL_URL.search(html), EXTERNAL_URL.search(html)
    assert "cdn" not in html.lower()
    for asset in re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css|png))["']""", html):
        response = http.get(f"/{asset}")
        assert response.status_code == 200, asset
        if asset.endswith(".css"):
            assert not EXTERNAL_URL.search(response.text), f"{asset} loads from elsewhere"


def test_the_ui_allows_this_server_only(http: httpx.Client) -> None:
    policy = http.get("/ui").headers["content-security-policy"]
    assert "default-src 'self'" in policy


def test_the_docs_work_from_the_packaged_swagger_ui(
    page: Any, http: httpx.Client, screenshots: Path
) -> None:
    page.goto("/docs")
    title = page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    assert http.get("/openapi.json").json()["info"]["title"] in title.inner_text()
    page.wait_for_selector(".opblock", timeout=30_000)
    assert page.locator(".opblock-summary-path", has_text="/overview").count() == 1
    page.screenshot(path=str(screenshots / "docs.png"))


def test_boolean_and_category_inputs_send_typed_values(page: Any, tmp_path: Path) -> None:
    """The session's app serves the demo model, all numbers. The form's other inputs are
    checked on a mixed model (number, category, boolean) fitted here: its real `/overview`
    answer, from a `ModelService` built in-process as the unit tests build it (with the hints
    of the profile training would log), is handed to the page in place of the server's, and
    the record the page then posts is captured, validated and scored by that model (not sent
    on)."""
    from ml.config import Settings
    from ml.drift import build_profile
    from ml.model_card import feature_hints
    from serving.protocol import predict_body
    from serving.schemas import ServingOptions
    from serving.service import ModelService
    from tests.unit.serving_support import (
        Registry,
        TelemetryCollector,
        mixed_dataset,
        mixed_model,
    )

    loaded = mixed_model(with_boolean=True)
    service = ModelService(
        Settings(var_dir=tmp_path / "var"), Registry({("mixed", "1"): loaded}), TelemetryCollector()
    )
    _run_aside(service.apply(ServingOptions(model_uri="models:/mixed/1")))
    gc.unfreeze()  # a load freezes what exists, as in a replica; give it back to the GC
    overview = _run_aside(service.overview()).body
    # no registry here: the hints of the reference profile training would log
    dataset = mixed_dataset(with_boolean=True)
    profile = build_profile(dataset.X, dataset.feature_types)
    overview["features"] = [asdict(hint) for hint in feature_hints(loaded.feature_types, profile)]
    posted: list[dict[str, Any]] = []
    answered: list[dict[str, Any]] = []

    def answer_predict(route: Any) -> None:
        record = json.loads(route.request.post_data)
        posted.append(record)
        model = service.require_model()
        scored = model.score_records(model.validator.records(record, 1))
        answered.append(predict_body(scored, ["captured"]))
        route.fulfill(json=answered[-1])

    page.route("**/overview", lambda route: route.fulfill(json=overview))
    page.route("**/predict", answer_predict)
    _open_ui(page)
    member = page.get_by_label("member", exact=True)
    assert member.evaluate("node => node.tagName") == "SELECT"
    plan = page.get_by_label("plan", exact=True)
    offered = plan.evaluate("node => Array.from(node.list.options, option => option.value)")
    hints = {hint["name"]: hint for hint in overview["features"]}
    assert offered == hints["plan"]["categories"] and set(offered) == {"basic", "pro", "team"}
    page.get_by_label("age", exact=True).fill("41")
    plan.fill("pro")
    member.select_option("false")
    page.get_by_label("spend", exact=True).fill("")
    page.click("#score")
    page.wait_for_selector("#answer:not([hidden])")
    assert posted == [{"age": 41, "plan": "pro", "member": False, "spend": None}]
    label = answered[0]["predictions"][0]["label"]
    assert label in overview["classes"]
    # as JavaScript's String() shows a JSON value: true, not Python's True
    assert page.inner_text("#answer-label") == (
        label if isinstance(label, str) else json.dumps(label)
    )


def _run_aside(coroutine: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` in a thread of its own: Playwright's sync API runs a loop in this one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
