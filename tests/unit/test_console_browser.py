"""The console end to end in a real headless Chromium: sign in, promote through the gate (refused
without a passing eval, then done with one), review three completions with the keyboard, and
read every effect back through the API. With LOOPGATE_CONSOLE_SCREENSHOTS=<folder> it also
saves a screenshot of each page there (docs/console.md shows them)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.support.browser import headless_chromium
from tests.support.served_app import served
from tests.unit.conftest import ADMIN, Env
from tests.unit.test_console_adapters import upload
from tests.unit.test_console_review import disliked, feedback_of
from tests.unit.test_console_training import add_progress, create_job, store_of
from tests.unit.test_evals_api import answer_by_model, run_eval

ACME = "/admin/tenants/acme"


def wait_for(driver: Chrome, what: Callable[[Chrome], object], timeout_s: float = 20) -> None:
    WebDriverWait(driver, timeout_s, poll_frequency=0.05).until(what)


def replaced(element: WebElement) -> Callable[[Chrome], bool]:
    """The page holding `element` is gone. (Selenium's `staleness_of` knows only the stale
    reference error; Chromium, asked about a node while the new page replaces the old, may
    answer "Node with given id does not belong to the document" instead: the same fact.)"""

    def gone(_: Chrome) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    return gone


def shot(driver: Chrome, name: str) -> None:
    folder = os.environ.get("LOOPGATE_CONSOLE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1360, min(max(int(height) + 40, 700), 2400))
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))
        driver.set_window_size(1360, 900)


def sign_in(driver: Chrome, base: str) -> None:
    driver.get(f"{base}/console")
    assert "Sign in" in driver.title
    shot(driver, "sign-in")
    driver.find_element(By.ID, "key").send_keys("admin-secret")
    driver.find_element(By.ID, "name").send_keys("ada")
    driver.find_element(By.ID, "sign-in").click()
    wait_for(driver, lambda d: d.current_url == f"{base}/console")
    assert "admin" in driver.find_element(By.CSS_SELECTOR, "header .who").text


def promote(driver: Chrome, base: str, version: str, reason: str) -> str:
    driver.get(f"{base}/console/aliases?tenant=acme")
    Select(driver.find_element(By.ID, "promote-version-support")).select_by_value(version)
    driver.find_element(By.ID, "promote-reason-support").send_keys(reason)
    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, "promote-submit-support").click()
    wait_for(driver, replaced(page))  # the answer to the form replaced the page
    return str(driver.find_element(By.TAG_NAME, "main").text)


def alias_target(env: Env) -> object:
    aliases = env.client.get(f"{ACME}/aliases", headers=ADMIN).json()["data"]
    return next(a["target"]["adapter_version"] for a in aliases if a["name"] == "support")


def shown_completion(driver: Chrome) -> str | None:
    found = driver.find_elements(By.ID, "review-completion-id")
    return found[0].text if found else None


def review(driver: Chrome, key: str, correction: str | None = None) -> str:
    """Decide the shown completion with one keystroke; returns its id once the next is shown."""
    shown = shown_completion(driver)
    assert shown, driver.find_element(By.TAG_NAME, "main").text
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(key)
    if correction is not None:
        box = driver.find_element(By.ID, "review-correction")
        wait_for(driver, lambda d: box.is_displayed())
        box.clear()
        box.send_keys(correction)
        box.send_keys(Keys.ENTER)
    wait_for(driver, lambda d: shown_completion(d) != shown)
    return shown


@pytest.mark.usefixtures("evals_worker")  # the gate's eval run is done by an evals worker
def test_sign_in_promote_through_the_gate_and_review_three_completions(
    env: Env, tmp_path: Path
) -> None:
    # What the admin finds: an alias on the base, a proven version and an untried one, and
    # three answers users disliked.
    env.client.put(f"{ACME}/aliases/support", json={}, headers=ADMIN).raise_for_status()
    proven, untried = upload(env, tmp_path, 1), upload(env, tmp_path, 2)
    disliked_ids = disliked(env, ["Where is my order?", "Cancel it", "Refund me"])
    env.engine.custom = answer_by_model("ANSWER: escalated to support ##")  # type: ignore[assignment]
    run = run_eval(env, proven)
    assert run["promote"] is True, run
    job_id = str(create_job(env)["id"])
    claimed = env.client.blocking_portal.call(store_of(env).claim_job, "worker-1")
    assert claimed is not None and claimed.id == job_id  # running, as a worker would have it
    add_progress(env, job_id, 1, 2.5)

    with served(env.client) as base, headless_chromium() as driver:
        sign_in(driver, base)
        shot(driver, "overview")

        # The gate refuses the untried version and says why; nothing moves.
        refused = promote(driver, base, untried, "looks fine to me")
        assert "eval" in refused.lower(), refused
        assert alias_target(env) is None
        shot(driver, "promote-refused")

        # The proven one goes through, with the eval run named in the audit trail.
        promote(driver, base, proven, "proven better")
        assert alias_target(env) == proven
        event = env.client.get(f"{ACME}/aliases/support/history", headers=ADMIN).json()[-1]
        assert event["actor"] == "console:ada" and event["forced"] is False
        assert run["id"] in event["reason"] and "proven better" in event["reason"]
        driver.get(f"{base}/console/aliases?tenant=acme")
        assert proven in driver.find_element(By.ID, "aliases-table").text
        shot(driver, "aliases")

        driver.get(f"{base}/console/evals/{run['id']}?tenant=acme")
        assert "ANSWER: escalated to support ##" in driver.find_element(By.ID, "eval-cases").text
        shot(driver, "eval-run")

        # Three reviews, one key each (c: correct, then Enter sends the edited answer).
        driver.get(f"{base}/console/review?tenant=acme")
        waiting = int(driver.find_element(By.ID, "review-waiting-count").text)
        assert waiting == 3
        shot(driver, "review")
        decided = {
            review(driver, "a"): "approve",
            review(driver, "c", correction="Your order ships today."): "correct",
            review(driver, "r"): "reject",
        }
        assert set(decided) == set(disliked_ids)
        assert driver.find_element(By.ID, "review-waiting-count").text == "0"

        # A running job's page follows its worker live (server-sent events): a loss point the
        # worker stores now shows up on the open page without a reload.
        driver.get(f"{base}/console/jobs/{job_id}?tenant=acme")
        wait_for(driver, lambda d: d.find_element(By.ID, "job-live-note").is_displayed())
        assert "step 2/4" not in driver.find_element(By.ID, "events-table").text
        add_progress(env, job_id, 2, 1.25)
        wait_for(driver, lambda d: "step 2/4" in d.find_element(By.ID, "events-table").text)
        assert driver.find_elements(By.CSS_SELECTOR, "#loss-chart svg polyline")
        shot(driver, "job")

        for page, name in (
            ("/console/tenants/acme", "tenant"),
            ("/console/training?tenant=acme", "training"),
            ("/console/evals?tenant=acme", "evals"),
        ):
            driver.get(base + page)
            assert "Traceback" not in driver.page_source
            shot(driver, name)

    # Read back through the tenant API: each decision is feedback by the reviewer.
    for cid, decision in decided.items():
        mine = [f for f in feedback_of(env, cid) if str(f["author"]).startswith("reviewer:")]
        assert len(mine) == 1, (cid, mine)
        assert mine[0]["author"] == "reviewer:ada"
        if decision == "approve":
            assert mine[0]["rating"] == "up"
        elif decision == "reject":
            assert mine[0]["rating"] == "down"
        else:
            assert mine[0]["correction"] == "Your order ships today."
