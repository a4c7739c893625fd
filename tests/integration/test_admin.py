"""The operator's admin area through the HTTP surface: who may see it, finding users,
suspending and unsuspending, granting credits with a reason, and the jobs, money and
audit pages with data in them (jobs are made through the models and the ledger, as the
worker would leave them; no worker runs)."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.accounts import service as accounts
from app.accounts.models import LoginSession, User
from app.admin import service as admin
from app.admin.models import AdminAction
from app.credits import ledger
from app.credits.models import LedgerEntry
from app.db import reading, transaction, utcnow
from app.enums import JobStatus
from app.generation.models import Job
from tests.admin_data import make_job, paid_purchase
from tests.support import PASSWORD

# ---- helpers ------------------------------------------------------------------------


def user_id(settings, email: str) -> int:
    with reading(settings) as session:
        return session.scalar(select(User.id).where(User.email == email))


def balance(settings, email: str) -> int:
    with reading(settings) as session:
        user = session.scalar(select(User).where(User.email == email))
        assert ledger.ledger_sum(session, user.id) == user.balance  # the cache matches the entries
        return user.balance


def audit_rows(settings) -> list[AdminAction]:
    with reading(settings) as session:
        return list(session.scalars(select(AdminAction).order_by(AdminAction.id)))


@pytest.fixture
def admin_client(make_client, settings):
    """A logged-in admin (made one as `gouache users make-admin` does)."""
    c = make_client()
    c.sign_up("root@example.com")
    assert admin.set_admin(settings, "root@example.com", True)
    return c


def csrf_field(page: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert match, f"no {name} in the page"
    return match.group(1)


# ---- who sees the admin area --------------------------------------------------------

ADMIN_URLS = ("/admin", "/admin/users", "/admin/users/1", "/admin/jobs", "/admin/money", "/admin/audit")


def test_visitors_and_users_get_a_404_and_no_admin_link(client, user_client, settings):
    for c in (client, user_client):
        for url in ADMIN_URLS:
            response = c.get(url)
            assert response.status_code == 404, url
            assert "Not found" in response.text
        # an action is refused the same way, before its CSRF check could name the route
        assert c.http.post("/admin/users/1/grant", data={"amount": "5", "reason": "x"}).status_code == 404
        assert c.form("/admin/users/1/grant", {"amount": "5", "reason": "x"}).status_code == 404
    assert 'href="/admin"' not in user_client.get("/").text
    assert balance(settings, "ada@example.com") == 200  # nothing was granted
    assert audit_rows(settings) == []


def test_an_admin_sees_the_link_and_every_page(admin_client):
    assert 'href="/admin"' in admin_client.get("/").text
    assert admin_client.get("/admin").headers["location"] == "/admin/users"
    for url in ADMIN_URLS[1:]:
        if url == "/admin/users/1":
            url = "/admin/users/1"  # the admin is user 1 in a fresh database
        response = admin_client.get(url)
        assert response.status_code == 200, (url, response.text[:500])
        assert 'aria-label="Admin"' in response.text


def test_revoking_admin_closes_the_area_at_once(admin_client, settings):
    assert admin_client.get("/admin/users").status_code == 200
    assert admin.set_admin(settings, "root@example.com", False)
    assert admin_client.get("/admin/users").status_code == 404


# ---- users -----------------------------------------------------------------------------


def test_search_users_by_email_and_status(admin_client, make_client, settings):
    for name in ("ada", "grace", "alan"):
        make_client().sign_up(f"{name}@lovelace.test" if name == "ada" else f"{name}@example.com")
    admin.suspend(settings, admin.CLI, user_id(settings, "alan@example.com"), "spam")

    everyone = admin_client.get("/admin/users").text
    assert all(e in everyone for e in ("ada@lovelace.test", "grace@example.com", "alan@example.com"))
    found = admin_client.get("/admin/users", params={"q": "LOVELACE"}).text
    assert "ada@lovelace.test" in found and "grace@example.com" not in found
    assert ">200</td>" in found  # the balance column
    suspended = admin_client.get("/admin/users", params={"status": "suspended"}).text
    assert "alan@example.com" in suspended and "grace@example.com" not in suspended
    assert "Suspended</span>" in suspended
    admins = admin_client.get("/admin/users", params={"status": "admins"}).text
    assert "root@example.com" in admins and "grace@example.com" not in admins
    # a LIKE wildcard is searched for literally
    assert "No accounts match" in admin_client.get("/admin/users", params={"q": "%"}).text
    assert admin_client.get("/admin/users", params={"page": "0"}).status_code == 422
    assert admin_client.get("/admin/users", params={"page": "99999999999999999999"}).status_code == 422
    assert admin_client.get("/admin/users/99999999999999999999").status_code == 422
    assert admin_client.get("/admin/users/424242").status_code == 404


def test_users_page_empty_state(admin_client):
    page = admin_client.get("/admin/users", params={"q": "nobody-here"}).text
    assert "No accounts match" in page and "nobody-here" in page


# ---- suspension ----------------------------------------------------------------------


def test_suspension_ends_sessions_blocks_login_and_generation_and_is_lifted(admin_client, make_client, settings):
    bob = make_client()
    bob.sign_up("bob@example.com")
    bob_id = user_id(settings, "bob@example.com")
    queued = bob.api_post("/api/v1/generations", {"prompt": "a red fox", "width": 64, "height": 64, "steps": 4})
    assert queued.status_code == 202, queued.text
    assert balance(settings, "bob@example.com") < 200  # the job holds its price

    missing_reason = admin_client.form(f"/admin/users/{bob_id}/suspend", {"reason": "  "})
    assert missing_reason.status_code == 422 and "Give a reason" in missing_reason.text
    done = admin_client.form(f"/admin/users/{bob_id}/suspend", {"reason": "Farming sign-up credits"})
    assert done.status_code == 303, done.text
    assert "Suspended. Their sessions ended" in admin_client.get(done.headers["location"]).text
    assert "1 active job(s) were cancelled" in admin_client.get(done.headers["location"]).text

    # the session ended: bob is a visitor again
    assert bob.get("/").status_code == 200 and 'href="/login"' in bob.get("/").text
    assert bob.get("/api/v1/generations/" + queued.json()["id"]).status_code == 401
    # the queued job was cancelled and its credits released
    with reading(settings) as session:
        job = session.get_one(Job, queued.json()["id"])
        assert job.status == JobStatus.CANCELLED
        assert session.scalar(select(func.count()).select_from(LoginSession).where(LoginSession.user_id == bob_id)) == 0
    assert balance(settings, "bob@example.com") == 200

    # the right password: a clear refusal, no session
    login = bob.form("/login", {"email": "bob@example.com", "password": PASSWORD})
    assert login.status_code == 403
    assert "This account is suspended" in login.text
    assert "gouache_session" not in login.cookies
    # the wrong password says only that: the suspension is not revealed to a guesser
    wrong = bob.form("/login", {"email": "bob@example.com", "password": "not the password"})
    assert "Wrong email or password" in wrong.text and "suspended" not in wrong.text

    # a session that survived (made after the suspension) still cannot generate
    with transaction(settings) as session:
        token = accounts.start_session(session, settings, session.get_one(User, bob_id))
    bob.http.cookies.delete("gouache_session")
    bob.http.cookies.set("gouache_session", token, domain="testserver.local")
    refused = bob.api_post("/api/v1/generations", {"prompt": "a blue fox", "width": 64, "height": 64, "steps": 4})
    assert refused.status_code == 403
    assert refused.json()["error"].startswith("This account is suspended")
    assert balance(settings, "bob@example.com") == 200
    with reading(settings) as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.user_id == bob_id)) == 1
    bob.http.cookies.clear()
    bob.get("/login")

    # suspending again, or an admin, is refused with a message
    again = admin_client.form(f"/admin/users/{bob_id}/suspend", {"reason": "again"})
    assert again.status_code == 422 and "already suspended" in again.text
    root = user_id(settings, "root@example.com")
    assert "Admins cannot be suspended" in admin_client.form(f"/admin/users/{root}/suspend", {"reason": "x"}).text

    lifted = admin_client.form(f"/admin/users/{bob_id}/unsuspend", {"reason": "Appeal accepted"})
    assert lifted.status_code == 303
    assert bob.form("/login", {"email": "bob@example.com", "password": PASSWORD}).status_code == 303
    again = bob.api_post("/api/v1/generations", {"prompt": "a green fox", "width": 64, "height": 64, "steps": 4})
    assert again.status_code == 202, again.text

    actions = [(a.actor, a.action, a.target, a.reason, a.detail) for a in audit_rows(settings)]
    assert actions == [
        ("cli", "make_admin", "root@example.com", "", ""),
        ("root@example.com", "suspend", "bob@example.com", "Farming sign-up credits", "1 active job(s) cancelled"),
        ("root@example.com", "unsuspend", "bob@example.com", "Appeal accepted", ""),
    ]


def test_a_running_job_of_a_suspended_user_is_asked_to_stop(settings):
    with transaction(settings) as session:
        eve = accounts.sign_up(session, "eve@example.com", PASSWORD).id
        ledger.grant(session, eve, 100, key="test:eve", memo="test")
    running = make_job(settings, eve, JobStatus.RUNNING)
    assert admin.suspend(settings, admin.CLI, eve, "abuse") == 1
    with reading(settings) as session:
        job = session.get_one(Job, running)
        # the worker sees the flag between steps and settles the job as cancelled (released)
        assert job.cancel_requested and job.status == JobStatus.RUNNING


# ---- granting credits ----------------------------------------------------------------


def test_grant_with_a_reason_writes_the_ledger_the_balance_and_the_audit_log(admin_client, make_client, settings):
    make_client().sign_up("cara@example.com")
    cara = user_id(settings, "cara@example.com")
    page = admin_client.get(f"/admin/users/{cara}").text
    request_id = csrf_field(page, "request_id")

    no_reason = admin_client.form(
        f"/admin/users/{cara}/grant", {"amount": "500", "reason": "", "request_id": request_id}
    )
    assert no_reason.status_code == 422 and "Give a reason" in no_reason.text
    for bad in ("", "abc", "0", "1.5", "1e309", "99999999999"):
        response = admin_client.form(
            f"/admin/users/{cara}/grant", {"amount": bad, "reason": "x", "request_id": request_id}
        )
        assert response.status_code == 422, bad
    assert balance(settings, "cara@example.com") == 200

    form = {"amount": "500", "reason": "Sorry for the outage", "request_id": request_id}
    assert admin_client.form(f"/admin/users/{cara}/grant", form).status_code == 303
    assert admin_client.form(f"/admin/users/{cara}/grant", form).status_code == 303  # a double submit
    assert balance(settings, "cara@example.com") == 700  # granted once
    with reading(settings) as session:
        [entry] = session.scalars(
            select(LedgerEntry)
            .where(LedgerEntry.user_id == cara, LedgerEntry.kind == ledger.GRANT)
            .order_by(LedgerEntry.id.desc())
            .limit(1)
        )
    assert (entry.amount, entry.reference) == (500, "admin:Sorry for the outage")
    assert "Sorry for the outage" in entry.memo

    # taking back: at most the balance
    take = {"amount": "-701", "reason": "Too much", "request_id": uuid.uuid4().hex}
    refused = admin_client.form(f"/admin/users/{cara}/grant", take)
    assert refused.status_code == 422 and "negative" in refused.text
    take = {"amount": "-100", "reason": "Double grant by mistake", "request_id": uuid.uuid4().hex}
    assert admin_client.form(f"/admin/users/{cara}/grant", take).status_code == 303
    assert balance(settings, "cara@example.com") == 600

    grants = [(a.actor, a.action, a.target, a.detail, a.reason) for a in audit_rows(settings) if a.action == "grant"]
    assert grants == [
        ("root@example.com", "grant", "cara@example.com", "+500 credits", "Sorry for the outage"),
        ("root@example.com", "grant", "cara@example.com", "-100 credits", "Double grant by mistake"),
    ]
    user_page = admin_client.get(f"/admin/users/{cara}").text
    assert "From the operator: Sorry for the outage" in user_page and "+500 credits" in user_page


def test_audit_page_lists_every_action_newest_first(admin_client, make_client, settings):
    make_client().sign_up("dan@example.com")
    dan = user_id(settings, "dan@example.com")
    admin.grant(settings, admin.Actor("root@example.com", 1), dan, 25, "Bug bounty", request_id="r1")
    admin.suspend(settings, admin.Actor("root@example.com", 1), dan, "Chargeback fraud")
    page = admin_client.get("/admin/audit").text
    rows = re.findall(r"<tr>(.*?)</tr>", page, re.S)[1:]
    assert len(rows) == 3
    assert "Suspended" in rows[0] and "Chargeback fraud" in rows[0] and "dan@example.com" in rows[0]
    assert "Granted credits" in rows[1] and "+25 credits" in rows[1] and "Bug bounty" in rows[1]
    assert "Made admin" in rows[2] and "command line" in rows[2]


# ---- jobs, queues and money ------------------------------------------------------------


def test_jobs_page_shows_states_errors_and_queue_depth(admin_client, settings):
    root = user_id(settings, "root@example.com")
    with transaction(settings) as session:
        ledger.grant(session, root, 1000, key="test:root", memo="test")
    for _ in range(3):
        make_job(settings, root, JobStatus.QUEUED, model="tiny", created_ago=timedelta(minutes=7))
    make_job(settings, root, JobStatus.RUNNING)
    make_job(settings, root, JobStatus.FAILED, error="CUDA out of memory while sampling")
    make_job(settings, root, JobStatus.SUCCEEDED, seconds=8)

    page = admin_client.get("/admin/jobs").text
    queue_row = re.search(r"<code class=\"muted\">[^<]*</code></td>\s*<td class=\"num\"><strong>3</strong>", page)
    assert queue_row, "the catalog model's queue shows 3 queued"
    assert "7 min" in page  # the oldest queued job has waited about 7 minutes
    assert "CUDA out of memory while sampling" in page
    assert "root@example.com" in page
    failed = admin_client.get("/admin/jobs", params={"state": "failed"}).text
    assert "CUDA out of memory" in failed and "status-queued" not in failed
    assert "No cancelled jobs" in admin_client.get("/admin/jobs", params={"state": "cancelled"}).text
    assert admin_client.get("/admin/jobs", params={"state": "bogus"}).status_code == 422
    with reading(settings) as session:
        assert admin.state_counts(session) == {
            "queued": 3,
            "running": 1,
            "succeeded": 1,
            "failed": 1,
            "cancelled": 0,
        }


def test_jobs_are_paged(admin_client, settings):
    root = user_id(settings, "root@example.com")
    with transaction(settings) as session:
        ledger.grant(session, root, 1000, key="test:root", memo="test")
    for i in range(admin.PAGE_SIZE + 2):
        make_job(
            settings, root, JobStatus.SUCCEEDED, price=1, prompt=f"job number {i}", created_ago=timedelta(minutes=i)
        )
    first = admin_client.get("/admin/jobs").text
    assert "job number 0<" in first and f"job number {admin.PAGE_SIZE + 1}<" not in first and "Older →" in first
    second = admin_client.get("/admin/jobs", params={"page": 2}).text
    assert f"job number {admin.PAGE_SIZE + 1}<" in second and "job number 0<" not in second


def test_money_and_generation_cost(any_db_settings):
    settings = any_db_settings
    with transaction(settings) as session:
        fay = accounts.sign_up(session, "fay@example.com", PASSWORD).id
        ledger.grant(session, fay, 200, key="signup:fay", memo="welcome")
    paid_purchase(settings, fay, credits=1000, amount=1000)
    paid_purchase(settings, fay, credits=5500, amount=5000, provider="test")
    make_job(settings, fay, JobStatus.SUCCEEDED, model="sd15", price=40, n_images=4, seconds=10)
    make_job(settings, fay, JobStatus.SUCCEEDED, model="sd15", price=10, n_images=1, seconds=3)
    make_job(settings, fay, JobStatus.SUCCEEDED, model="sdxl", price=30, n_images=2, seconds=20)
    make_job(settings, fay, JobStatus.FAILED, model="sdxl", price=30)
    make_job(settings, fay, JobStatus.QUEUED, model="sdxl", price=30)

    with reading(settings) as session:
        money = admin.money(session, 7)
        costs = {c.model: c for c in admin.generation_costs(session, 7)}
        spent = admin.captured(session)
    today = money.days[0]
    assert today.day == utcnow().date().isoformat() and len(money.days) == 7
    assert (today.sold, today.sold_test, today.spent, today.granted) == (6500, 5500, 80, 200)
    assert today.revenue == {"usd": 1000}  # the test checkout moves no money
    assert money.totals.revenue == {"usd": 1000} and money.totals.spent == 80 == spent
    assert costs["sd15"].jobs == 2 and costs["sd15"].images == 5
    assert costs["sd15"].seconds == pytest.approx(13, abs=0.01)
    assert costs["sd15"].seconds_per_image == pytest.approx(2.6, abs=0.01)
    assert costs["sd15"].credits_per_image == pytest.approx(10)
    assert costs["sdxl"].seconds_per_image == pytest.approx(10, abs=0.01)


def test_money_page_renders_with_data_and_empty(admin_client, settings):
    empty = admin_client.get("/admin/money").text
    assert "No finished jobs in the last 30 days" in empty
    assert admin_client.get("/admin/money", params={"days": "0"}).status_code == 422
    assert admin_client.get("/admin/money", params={"days": "100000"}).status_code == 422

    root = user_id(settings, "root@example.com")
    paid_purchase(settings, root, credits=1000, amount=1299)
    make_job(settings, root, JobStatus.SUCCEEDED, model="tiny", price=12, n_images=2, seconds=5)
    page = admin_client.get("/admin/money").text
    assert "12.99 USD" in page
    assert "<strong>2.50</strong>" in page  # seconds per image
    assert "1,000" in page
