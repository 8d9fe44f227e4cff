"""The review app in a real browser (Debian's Chromium, driven by Playwright), as reviewers and leads use it:
log in, work a queue with the keyboard only (label, undo, skip), correct an answer, see progress, export
JSON Lines and Parquet; and the refusals: forms without the session's CSRF token, a reviewer on lead and
admin pages, a lead acting on a queue it does not lead.

The app runs in-process on the session's broker and database; items come in over reviews.requested. One
browser for the whole session, a fresh context (cookies) per test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from flywheel.common.kafka import send_events, wait_assigned
from flywheel.review.access import Actor
from flywheel.review.main import ReviewApp
from flywheel.review.queues import Verdict
from tests.review_helpers import answer_request, client, predictive_request, review_settings, wait_open

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "correct horse battery"


def ensure_chromium() -> None:
    """Debian's Chromium (Playwright's own browser download does not work here): installed when missing."""
    if CHROMIUM.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        # A failure, not a skip: a suite that silently drops its browser tests would pass without them.
        pytest.fail("/usr/bin/chromium is missing and cannot be installed here: run the tests as root on a machine "
                    "with apt-get (CI does), or `apt-get install -y chromium` first")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    playwright_api = pytest.importorskip("playwright.async_api")
    ensure_chromium()
    async with playwright_api.async_playwright() as playwright:
        # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        await launched.close()


@dataclass
class Site:
    app: ReviewApp
    url: str
    unique: str
    fraud: str
    assistant: str
    other: str
    disputed: str


@pytest.fixture(scope="module")
async def site(infra, producer) -> AsyncIterator[Site]:  # type: ignore[no-untyped-def]
    import uuid

    unique = uuid.uuid4().hex[:8]
    app = ReviewApp(review_settings(infra, undo_seconds=60.0, lease_seconds=300.0))
    await app.start()
    await wait_assigned(app.consumer)
    admin = Actor("tests", "admin")
    fraud, assistant, other = f"a-fraud-{unique}", f"b-assistant-{unique}", f"c-other-{unique}"
    disputed = f"d-disputed-{unique}"
    for name, role, queues in (("rita", "reviewer", []), ("leo", "lead", []), ("lena", "lead", [fraud, assistant])):
        await app.accounts.create_user(admin, name, PASSWORD, role, queues)
    await send_events(producer, [
        *(predictive_request(fraud, f"f{i}-{unique}", row=i % 3, probability=0.45 + i / 100) for i in range(4)),
        answer_request(assistant, f"q1-{unique}"), answer_request(assistant, f"q2-{unique}"),
        predictive_request(other, f"o1-{unique}", row=0), predictive_request(disputed, f"x1-{unique}", row=0)])
    async with client(app.url, infra.tokens.admin) as http:
        for queue, count in ((fraud, 4), (assistant, 2), (other, 1), (disputed, 1)):
            await wait_open(http, queue, count)
    try:
        yield Site(app, app.url, unique, fraud, assistant, other, disputed)
    finally:
        await app.stop()


@pytest.fixture
async def page(browser, site: Site) -> AsyncIterator[Any]:  # type: ignore[no-untyped-def]
    context = await browser.new_context(base_url=site.url, accept_downloads=True)
    context.set_default_timeout(15_000)
    tab = await context.new_page()
    yield tab
    await context.close()


async def log_in(page: Any, username: str, password: str = PASSWORD) -> None:
    await page.goto("/login")
    await page.fill("input[name=username]", username)
    await page.fill("input[name=password]", password)
    await page.press("input[name=password]", "Enter")
    await page.wait_for_url("**/")
    assert await page.locator(".who").inner_text() != ""


async def csrf_of(page: Any) -> str:
    return await page.locator("input[name=csrf_token]").first.get_attribute("value")


async def rows(app: ReviewApp, query: str, *args: Any) -> list[dict[str, Any]]:
    async with app.db.connection() as conn:
        return await (await conn.execute(query, args)).fetchall()


async def test_log_in_and_work_a_queue_with_the_keyboard(page, site: Site) -> None:  # type: ignore[no-untyped-def]
    await page.goto("/progress")  # not logged in: the login page, then back where we were
    await page.wait_for_url("**/login?next=/progress")
    await page.fill("input[name=username]", "rita")
    await page.fill("input[name=password]", "not the password")
    await page.press("input[name=password]", "Enter")
    await page.wait_for_selector("p.error")
    assert "wrong user name or password" in await page.inner_text("p.error")
    await page.fill("input[name=username]", "rita")
    await page.fill("input[name=password]", PASSWORD)
    await page.press("input[name=password]", "Enter")
    await page.wait_for_url("**/progress")

    await page.keyboard.press("q")  # the queues
    await page.wait_for_url("**/")
    await page.keyboard.press("1")  # the first queue: fraud
    await page.wait_for_url(f"**/queues/{site.fraud}")
    await page.keyboard.press("n")  # claim the next item
    await page.wait_for_selector("#item")
    first = await page.get_attribute("#item", "data-item")
    assert await page.inner_text(".predicted") in ("legit", "fraud")
    assert "transaction_id" in await page.inner_text("table.inputs")
    assert "low confidence" in await page.inner_text(".reason")

    await page.keyboard.press("2")  # label it fraud: saved, and the next item is there
    await page.wait_for_selector("#flash")
    assert "fraud: saved." in await page.inner_text("#flash")
    second = await page.get_attribute("#item", "data-item")
    assert second != first
    assert await page.inner_text(".undo .last-category") == "fraud"

    await page.keyboard.press("u")  # undo: the first item comes back
    await page.wait_for_selector(f"#item[data-item='{first}']")
    assert "Undone" in await page.inner_text("#flash")
    await page.keyboard.press("1")  # legit this time
    await page.wait_for_selector(f"#item:not([data-item='{first}'])")
    await page.keyboard.press("s")  # skip the next one
    await page.wait_for_selector("#flash:has-text('Skipped.')")

    decisions = await rows(site.app, "SELECT item_id, category, undone_at FROM decisions WHERE reviewer = 'rita'"
                                     " AND queue = %s ORDER BY decided_at", site.fraud)
    assert [(d["item_id"], d["category"], d["undone_at"] is not None) for d in decisions] == [
        (first, "fraud", True), (first, "legit", False)]
    skipped = await rows(site.app, "SELECT item_id FROM skips WHERE reviewer = 'rita' AND queue = %s", site.fraud)
    assert [s["item_id"] for s in skipped] == [second]
    # The shortcut help lists every action.
    await page.keyboard.press("?")
    help_text = await page.inner_text("#help")
    for key in ("n", "s", "u", "a", "c", "r"):
        assert f"{key}" in help_text


async def test_correct_an_answer(page, site: Site) -> None:  # type: ignore[no-untyped-def]
    await log_in(page, "rita")
    await page.goto(f"/queues/{site.assistant}")
    await page.keyboard.press("n")
    await page.wait_for_selector("#answer")
    assert "within 120 days" in await page.inner_text("#answer")
    chunks = await page.inner_text(".chunks")
    assert "Disputes" in chunks and "within 60 days of the statement" in chunks
    assert "b-assistant" in await page.inner_text(".meta") and "prompt" in await page.inner_text(".meta")
    item_id = await page.get_attribute("#item", "data-item")

    await page.keyboard.press("c")  # edit the answer in place
    assert await page.evaluate("document.activeElement.id") == "correction"
    await page.keyboard.press("Control+a")
    await page.keyboard.type("You can dispute a card payment within 60 days of the statement; it is free.")
    await page.keyboard.press("Control+Enter")
    await page.wait_for_selector("#flash:has-text('Corrected: saved.')")

    [decision] = await rows(site.app, "SELECT action, corrected_completion FROM decisions WHERE item_id = %s", item_id)
    assert decision["action"] == "correct"
    assert decision["corrected_completion"] == ("You can dispute a card payment within 60 days of the statement; "
                                                 "it is free.")
    # The next answer: reject it with a reason, by keyboard too.
    await page.wait_for_selector("#answer")
    await page.keyboard.press("r")
    await page.keyboard.type("not what was asked")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#flash:has-text('Rejected: saved.')")


async def test_a_lead_sees_progress_and_exports(page, site: Site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Some work to see: rita labels an item of the other queue through the JSON API's use case.
    rita = Actor("rita", "reviewer")
    claim = await site.app.queues.claim_next(rita, site.other)
    assert claim is not None
    await site.app.queues.decide(rita, claim.item.id, Verdict(label="fraud"))

    await log_in(page, "leo")
    await page.keyboard.press("p")
    await page.wait_for_url("**/progress")
    depth = await page.inner_text("#queue-progress")
    assert site.fraud in depth and site.assistant in depth
    row = page.locator("#reviewer-progress tr[data-reviewer=rita]")
    assert int(await row.locator(".total").inner_text()) >= 1

    await page.goto("/export")
    await page.select_option("#export-queue", site.other)
    async with page.expect_download() as download_info:
        await page.click("#export-jsonl")
    download = await download_info.value
    path = tmp_path / download.suggested_filename
    await download.save_as(path)
    assert path.name.endswith(".jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["queue"], r["reviewer"], r["label_flag"], r["final"]) for r in records] == [
        (site.other, "rita", True, True)]
    assert records[0]["entity_keys"]["transaction_id"] == f"o1-{site.unique}-t0"

    await page.goto("/export")
    await page.fill("#export-reviewer", "rita")
    async with page.expect_download() as download_info:
        await page.click("#export-parquet")
    download = await download_info.value
    path = tmp_path / download.suggested_filename
    await download.save_as(path)
    table = pq.read_table(path)
    exported = table.to_pylist()
    assert {r["reviewer"] for r in exported} == {"rita"}
    assert {r["queue"] for r in exported} >= {site.other}
    assert table.schema.field("decided_at").type.tz == "UTC"


async def test_forms_without_the_csrf_token_are_refused(page, site: Site) -> None:  # type: ignore[no-untyped-def]
    await log_in(page, "rita")
    await page.goto(f"/queues/{site.fraud}")
    token = await csrf_of(page)
    # The session cookie alone is not enough: no token, a wrong token, another session's token.
    for form in ({}, {"csrf_token": "forged"}, {"csrf_token": token + "x"}):
        response = await page.request.post(f"/queues/{site.fraud}/claim", form=form)
        assert response.status == 403, await response.text()
        assert "CSRF" in await response.text()
    api = await page.request.post(f"/api/v1/queues/{site.fraud}/claim")
    assert api.status == 403 and "CSRF" in (await api.json())["error"]
    logout = await page.request.post("/logout", form={})
    assert logout.status == 403
    # With the token it works (the page's own forms carry it).
    ok = await page.request.post(f"/api/v1/queues/{site.fraud}/claim", headers={"X-CSRF-Token": token})
    assert ok.status in (200, 204)
    # The login form is protected too (double-submit cookie): a login posted without it is refused.
    fresh = await page.context.browser.new_context(base_url=site.url)
    try:
        response = await fresh.request.post("/login", form={"username": "rita", "password": PASSWORD,
                                                              "csrf_token": "guessed"})
        assert response.status == 403
        assert all(c["name"] != "flywheel_review_session" for c in await fresh.cookies())
    finally:
        await fresh.close()
    # Logging out ends the session for good.
    await page.click("text=Log out")
    await page.wait_for_url("**/login")
    await page.goto("/")
    await page.wait_for_url("**/login?next=/")


async def test_reviewers_and_leads_stay_in_their_lane(page, browser, site: Site) -> None:  # type: ignore[no-untyped-def]
    # A conflict in a queue lena does not lead: two reviewers label one double-labelled item differently.
    async with site.app.db.connection() as conn:
        await conn.execute("UPDATE items SET labels_needed = 2 WHERE queue = %s", (site.disputed,))
    item_id = None
    for name, label in (("ann", "fraud"), ("ben", "legit")):
        claim = await site.app.queues.claim_next(Actor(name, "reviewer"), site.disputed)
        assert claim is not None
        item_id = claim.item.id
        await site.app.queues.decide(Actor(name, "reviewer"), claim.item.id, Verdict(label=label))

    await log_in(page, "rita")
    nav = await page.inner_text("header nav")
    assert "Users" not in nav and "Conflicts" not in nav and "Export" not in nav
    token = await csrf_of(page)
    for path in ("/users", "/quality", "/conflicts", "/export"):
        response = await page.goto(path)
        assert response.status == 403, path
        assert "Not allowed" in await page.inner_text("h1")
    for path, form in (("/users", {"username": "mallory", "password": PASSWORD, "role": "admin"}),
                       (f"/items/{item_id}/resolve", {"label": "fraud"}),
                       ("/users/leo/disable", {})):
        response = await page.request.post(path, form={**form, "csrf_token": token})
        assert response.status == 403, (path, await response.text())
    api = await page.request.get("/api/v1/export", headers={"X-CSRF-Token": token})
    assert api.status == 403

    lena = await browser.new_context(base_url=site.url)
    try:
        tab = await lena.new_page()
        await log_in(tab, "lena")
        await tab.goto("/conflicts")
        assert await tab.locator(f"article[data-item='{item_id}']").count() == 0  # not her queue
        response = await tab.request.post(f"/items/{item_id}/resolve", form={"label": "fraud",
                                                                          "csrf_token": await csrf_of(tab)})
        assert response.status == 403 and "does not lead queue" in await response.text()
        response = await tab.goto(f"/queues/{site.disputed}")
        assert response.status == 403
    finally:
        await lena.close()

    # leo leads every queue: he resolves it from the keyboard.
    await page.click("text=Log out")
    await log_in(page, "leo")
    await page.goto("/conflicts")
    assert await page.locator(f"article[data-item='{item_id}']").count() == 1
    await page.keyboard.press("2")  # the second label: fraud
    await page.wait_for_selector("#flash:has-text('Resolved: fraud.')")
    [item] = await rows(site.app, "SELECT status FROM items WHERE id = %s", item_id)
    assert item["status"] == "done"

    # A lead creates reviewers (only reviewers), who can log in at once.
    await page.goto("/users")
    assert await page.locator("#new-user select[name=role] option").all_inner_texts() == ["reviewer"]
    await page.fill("#new-user input[name=username]", f"newbie-{site.unique}")
    await page.fill("#new-user input[name=password]", PASSWORD)
    await page.click("#new-user button[type=submit]")
    await page.wait_for_selector(f"#flash:has-text('Created reviewer newbie-{site.unique}.')")
    newbie = await browser.new_context(base_url=site.url)
    try:
        await log_in(await newbie.new_page(), f"newbie-{site.unique}")
    finally:
        await newbie.close()
