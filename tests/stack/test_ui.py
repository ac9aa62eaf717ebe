"""/ui in a real browser (Debian's headless Chromium) against the running stack: a token-less
visit is refused (the panels' request answers 401, nothing is shown, the page says so); a read
token entered once in the form is kept for the tab (a reload shows the panels without asking)
and never lands in a URL; every panel then shows the stack's data, only the token's namespace's,
with nothing in the browser's console. A screenshot of the page is saved with the test's output.

The data is made through the API first: a compile (a miss, then a job), a compile request and a
lookup it answers (hits), lookups of the same model with other flags (misses: one never compiled,
the other compiled next, its nearest artifact differing in compiler.flags), a compile that fails (its log tail
shown), and a failing job in another namespace that the page must not show."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.api import hlo_model, neuron_spec, upload, wait_job
from tests.support.browser import chromium, console, full_page_screenshot

RUN = uuid.uuid4().hex[:6]
NS, OTHER = f"ui-{RUN}", f"ui-other-{RUN}"
PANELS = ("panel-history", "panel-queues", "panel-toolchains", "panel-misses", "panel-most-used", "panel-storage",
          "panel-failed")
WAIT_S = 20
# What the neuronx-cc test double logs when asked to fail (tests/doubles/neuronx_cc_double.py).
FAILED_LOG_LINE = "ERROR 70: compilation failed (requested by test double)"


@dataclass(frozen=True)
class Seeded:
    read_token: str
    hit_key: str
    nearest_differs_key: str  # compiled after missing; its nearest artifact is hit_key
    failed_job: str
    other_failed_job: str  # in OTHER: never on the page of NS's token


def _as(running, token: str) -> httpx.Client:
    return httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _compiled(api: httpx.Client, spec: dict, state: str = "succeeded") -> dict:
    queued = api.post("/v1/compile", json={"spec": spec})
    assert queued.status_code == 202, queued.text
    return wait_job(api, queued.json()["job"]["id"], states=(state,))


@pytest.fixture(scope="module")
def seeded(running) -> Seeded:
    stack = running.stack
    write = stack.create_token(f"ui-write-{RUN}", "write", (NS,))
    other = stack.create_token(f"ui-other-{RUN}", "write", (OTHER,))
    read = stack.create_token(f"ui-read-{RUN}", "read", (NS,))
    with _as(running, write) as api:
        model = upload(api, hlo_model())
        spec = neuron_spec(model, namespace=NS)
        hit_key = _compiled(api, spec)["key"]
        for route in ("/v1/compile", "/v1/lookup"):
            answered = api.post(route, json={"spec": spec})
            assert answered.status_code == 200 and answered.json()["status"] == "hit", answered.text
        other_flags = neuron_spec(model, namespace=NS, compiler={"name": "neuronx-cc", "flags": ["-O3"]})
        for flags in (["-O1"], ["-O3"]):
            missed = neuron_spec(model, namespace=NS, compiler={"name": "neuronx-cc", "flags": flags})
            assert api.post("/v1/lookup", json={"spec": missed}).status_code == 404
        differs_key = _compiled(api, other_flags)["key"]
        failed = _compiled(api, neuron_spec(upload(api, hlo_model("double:fail")), namespace=NS), "failed")
    with _as(running, other) as api:
        other_failed = _compiled(api, neuron_spec(upload(api, hlo_model("double:fail")), namespace=OTHER), "failed")
    return Seeded(read, hit_key, differs_key, failed["id"], other_failed["id"])


def _wait_state(driver, state: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    status = driver.find_element(By.ID, "status")
    WebDriverWait(driver, WAIT_S).until(lambda _: status.get_attribute("data-state") in (state, "error"))
    assert status.get_attribute("data-state") == state, status.text
    return str(status.text)


def _errors(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e["level"] == "SEVERE"]


def test_ui_refuses_without_a_token_then_shows_every_panel_with_the_stacks_data(
        running, seeded: Seeded, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    # Outside the browser too: the shell holds no data; the panels need a read token.
    assert httpx.get(f"{running.url}/ui/panels").status_code == 401
    assert "panel-" not in httpx.get(f"{running.url}/ui").text

    with chromium(tmp_path / "profile") as driver:
        driver.get(f"{running.url}/ui")
        said = _wait_state(driver, "refused")
        assert "401" in said and "bearer token is required" in said
        assert driver.find_element(By.ID, "panels").get_attribute("innerHTML") == ""
        assert driver.find_element(By.ID, "token-form").is_displayed()
        # The one console error is the browser's own report of the panels' request refused.
        refused = _errors(console(driver))
        assert len(refused) == 1 and "ui/panels" in refused[0]["message"] and "401" in refused[0]["message"], refused

        driver.find_element(By.ID, "token").send_keys(seeded.read_token)
        driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
        _wait_state(driver, "ok")
        assert seeded.read_token not in driver.current_url
        assert driver.execute_script("return sessionStorage.getItem('neffcache-token')") == seeded.read_token

        # Every panel has rows (or bars) of data, none says it has nothing.
        for panel in PANELS:
            section = driver.find_element(By.ID, panel)
            assert not section.find_elements(By.CSS_SELECTOR, ".empty"), (panel, section.text)
            assert section.find_elements(By.CSS_SELECTOR, ".row, rect.bar"), (panel, section.text)
        history = driver.find_element(By.ID, "panel-history")
        assert len(history.find_elements(By.CSS_SELECTOR, "svg.chart")) == 2
        assert history.find_elements(By.CSS_SELECTOR, "svg[data-chart=hit-rate] rect.bar")
        queues = driver.find_element(By.ID, "panel-queues").text
        assert "neuronx-cc==" in queues and "inductor==" in queues
        misses = driver.find_element(By.ID, "panel-misses")
        differing = misses.find_element(By.CSS_SELECTOR, f"code[title='{seeded.nearest_differs_key}']")
        row = differing.find_element(By.XPATH, "./ancestor::tr")
        # The double's flags as the key records them (neffcache.flags normalises -O3).
        assert "compiler.flags" in row.text and '["--optlevel=3"] ≠ ["--optlevel=2"]' in row.text, row.text
        assert row.find_element(By.CSS_SELECTOR, f"code[title='{seeded.hit_key}']")
        assert "a lookup only" in misses.text  # the -O1 lookup: nothing compiled its key
        most_used = driver.find_element(By.ID, "panel-most-used")
        assert most_used.find_element(By.CSS_SELECTOR, f"code[title='{seeded.hit_key}']")
        failed = driver.find_element(By.ID, "panel-failed")
        assert seeded.failed_job[:8] in failed.text and FAILED_LOG_LINE in failed.text
        assert seeded.other_failed_job[:8] not in driver.page_source and OTHER not in driver.page_source
        assert NS in driver.find_element(By.ID, "panel-storage").text
        assert "neuronx-cc==" in driver.find_element(By.ID, "panel-toolchains").text
        assert _errors(console(driver)) == []

        # Entered once: a reload shows the panels without asking for the token again.
        driver.refresh()
        _wait_state(driver, "ok")
        assert not driver.find_element(By.ID, "token-form").is_displayed()
        assert driver.find_elements(By.CSS_SELECTOR, "#panel-failed .row")
        shot = full_page_screenshot(driver, tmp_path / "ui.png")
        assert _errors(console(driver)) == []
    assert shot.stat().st_size > 10_000
    print(f"\n/ui screenshot: {shot}")
