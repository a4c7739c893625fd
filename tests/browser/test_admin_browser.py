"""An operator in Chromium: the admin pages empty, then with users, jobs, purchases and
actions in them; granting credits and suspending an account through the forms; and a
user who is not an admin finding no trace of the area. Web process only (no worker):
jobs are rows as the services leave them."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import update

from app.accounts import service as accounts
from app.accounts.models import User
from app.admin import service as admin
from app.config import REPO_ROOT
from app.credits import ledger
from app.credits.models import LedgerEntry, Purchase
from app.db import transaction, utcnow
from app.enums import JobStatus
from tests.admin_data import make_job, paid_purchase
from tests.browser.conftest import web_server
from tests.support import PASSWORD, make_settings, migrated

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("admin")
    settings = migrated(make_settings(tmp / "data", model_catalog=REPO_ROOT / "docs" / "catalog.example.toml"))
    with transaction(settings) as session:
        root = accounts.sign_up(session, "operator@example.com", PASSWORD)
        # an admin without an audit row yet, so the audit log's empty state can be seen first
        session.execute(update(User).where(User.id == root.id).values(is_admin=True))
    with web_server(settings, tmp / "web.log") as url:
        yield settings, url


def log_in(page: Page, url: str, email: str) -> None:
    page.goto(f"{url}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("link", name="Create")).to_be_visible()


def backdate(settings, job_id: str, days: int) -> None:
    """Move a job's ledger entries ``days`` back, for a money page with history."""
    with transaction(settings) as session:
        when = utcnow() - timedelta(days=days)
        session.execute(update(LedgerEntry).where(LedgerEntry.job_id == job_id).values(created_at=when))


def seed(settings) -> dict[str, int]:
    ids = {}
    with transaction(settings) as session:
        for email in ("ada@lovelace.test", "grace@example.com", "alan@example.com", "farmer-17@mailinator.test"):
            user = accounts.sign_up(session, email, PASSWORD)
            ledger.grant(session, user.id, 200, key=f"signup:{user.id}", memo="Welcome credits")
            ids[email] = user.id
    ada, grace, alan = ids["ada@lovelace.test"], ids["grace@example.com"], ids["alan@example.com"]
    for who, credits, amount, days in ((ada, 5500, 5000, 0), (grace, 1000, 1000, 1), (alan, 12000, 10000, 3)):
        purchase = paid_purchase(settings, who, credits=credits, amount=amount)
        when = utcnow() - timedelta(days=days)
        with transaction(settings) as session:
            session.execute(update(Purchase).where(Purchase.id == purchase).values(paid_at=when))
            session.execute(
                update(LedgerEntry).where(LedgerEntry.reference == f"purchase:{purchase}").values(created_at=when)
            )
    prompts = [
        "a lighthouse at dusk, oil on canvas",
        "isometric cozy library, warm light",
        "portrait of a fox in a tweed jacket",
    ]
    for i in range(9):
        model, seconds, n = (("sd15", 6.5 + i, 4), ("sdxl", 21 + 2 * i, 2), ("demo", 0.8, 1))[i % 3]
        job = make_job(
            settings, (ada, grace, alan)[i % 3], JobStatus.SUCCEEDED, model=model, price=(40, 90, 2)[i % 3],
            n_images=n, seconds=seconds, prompt=prompts[i % 3], created_ago=timedelta(days=i % 4, minutes=5),
        )  # fmt: skip
        backdate(settings, job, i % 4)
    make_job(
        settings, grace, JobStatus.FAILED, model="sdxl", price=90, error="CUDA out of memory while sampling step 12"
    )
    make_job(
        settings,
        alan,
        JobStatus.FAILED,
        model="sd15",
        price=40,
        error="No worker picked this job up in time; no credits were charged. Please try again later.",
    )  # noqa: E501
    make_job(settings, ada, JobStatus.CANCELLED, model="sd15", price=40)
    make_job(settings, ada, JobStatus.RUNNING, model="sdxl", price=90, prompt="a cathedral made of glass")
    for i in range(3):
        make_job(settings, grace, JobStatus.QUEUED, model="sdxl", price=90, created_ago=timedelta(minutes=4 + i))
    admin.grant(
        settings, admin.Actor("operator@example.com", 1), alan, 300, "Sorry for Tuesday's outage", request_id="s1"
    )
    return ids


def test_admin_pages_empty_then_with_data(server, browser, page: Page, shoot):
    settings, url = server
    log_in(page, url, "operator@example.com")
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="Admin").click()
    expect(page).to_have_url(f"{url}/admin/users")
    expect(page.get_by_role("heading", name="Users")).to_be_visible()
    shoot("admin-01-users-only-the-operator")

    page.goto(f"{url}/admin/jobs")
    expect(page.get_by_text("No jobs yet")).to_be_visible()
    shoot("admin-02-jobs-empty")
    page.goto(f"{url}/admin/money")
    expect(page.get_by_text("No finished jobs in the last 30 days")).to_be_visible()
    shoot("admin-03-money-empty")
    page.goto(f"{url}/admin/audit")
    expect(page.get_by_text("No admin actions yet")).to_be_visible()
    shoot("admin-04-audit-empty")

    ids = seed(settings)

    page.goto(f"{url}/admin/users")
    expect(page.locator("table")).to_contain_text("farmer-17@mailinator.test")
    shoot("admin-05-users")
    page.get_by_label("Search by email").fill("farmer")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("table tbody tr")
    expect(rows).to_have_count(1)
    page.get_by_role("link", name="farmer-17@mailinator.test").click()
    expect(page.get_by_role("heading", name="farmer-17@mailinator.test")).to_be_visible()

    # a grant without a reason is refused in the form; with one, it lands in the ledger
    page.get_by_label("Credits", exact=True).fill("150")
    page.get_by_role("button", name="Grant").click()
    expect(page.get_by_text("Give a reason: it goes in the audit log.")).to_be_visible()
    shoot("admin-06-user-grant-error")
    page.locator("#grant-reason").fill("Beta tester thank-you")
    page.get_by_role("button", name="Grant").click()
    expect(page.get_by_role("status")).to_contain_text("Done")
    expect(page.locator(".meta")).to_contain_text("350 credits")

    page.locator("#suspend-reason").fill("Farming sign-up credits with many accounts")
    page.get_by_role("button", name="Suspend account").click()
    expect(page.get_by_role("status")).to_contain_text("Suspended. Their sessions ended")
    expect(page.get_by_role("button", name="Unsuspend")).to_be_visible()
    shoot("admin-07-user-suspended")

    page.goto(f"{url}/admin/users/{ids['alan@example.com']}")
    expect(page.locator("table").first).to_contain_text("From the operator: Sorry for Tuesday's outage")
    shoot("admin-08-user-with-history")

    page.goto(f"{url}/admin/jobs")
    expect(page.locator("table").first).to_contain_text("Stable Diffusion XL 1.0")
    expect(page.get_by_text("CUDA out of memory while sampling step 12")).to_be_visible()
    shoot("admin-09-jobs")
    page.get_by_role("link", name=re.compile(r"^Failed")).click()
    expect(page.locator("table").nth(1).locator("tbody tr")).to_have_count(2)
    shoot("admin-10-jobs-failed")

    page.goto(f"{url}/admin/money")
    expect(page.locator(".admin-stats")).to_contain_text("160.00 USD")
    expect(page.locator("table").first).to_contain_text("sdxl")
    shoot("admin-11-money")

    page.goto(f"{url}/admin/audit")
    expect(page.locator("tbody tr")).to_have_count(3)
    expect(page.locator("tbody tr").first).to_contain_text("Farming sign-up credits with many accounts")
    shoot("admin-12-audit")


def test_a_user_finds_no_admin_area(server, browser):
    settings, url = server
    with transaction(settings) as session:
        accounts.sign_up(session, "curious@example.com", PASSWORD)
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    try:
        log_in(page, url, "curious@example.com")
        expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin")).to_have_count(0)
        response = page.goto(f"{url}/admin/users")
        assert response is not None and response.status == 404
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    finally:
        context.close()
