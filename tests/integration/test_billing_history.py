"""The billing history reads as people think of it: one row per job with its prompt, thumbnail,
status and what it cost, purchases and grants as their own rows, and a running balance that
agrees with the ledger. The pricing page shows the catalog models' own sizes and an example
per mode, priced by the one price function."""

from __future__ import annotations

import html as htmllib
import re
import uuid

import pytest
from sqlalchemy import select

from app.accounts.models import User
from app.credits import ledger, pricing
from app.credits.models import LedgerEntry
from app.credits.service import HISTORY_PAGE
from app.db import transaction
from app.enums import JobStatus
from app.generation import images
from app.generation.catalog import get_catalog
from app.generation.models import Job
from app.generation.quote import size_presets
from tests.billing_data import add_job, adjust, buy, grant, ledger_balances
from tests.support import make_settings, migrated


def _user_id(settings, email: str) -> int:
    with transaction(settings) as session:
        return session.scalar(select(User.id).where(User.email == email))


def _text(fragment: str) -> str:
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def _cell(row: str, name: str) -> str:
    found = re.search(rf'<td class="{name}[^"]*"[^>]*>(.*?)</td>', row, re.S)
    assert found, (name, row)
    return _text(found.group(1))


def _number(text: str) -> int:
    return int(text.replace(",", "").replace("−", "-").replace("+", ""))


def rows(page_html: str) -> list[dict]:
    """The history table's rows, newest first, as a person reads them."""
    found = []
    for chunk in page_html.split('<tr class="history-row')[1:]:
        row = chunk[: chunk.index("</tr>")]
        attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', row[: row.index(">")]))
        thumb = re.search(r'<img src="(/images/[\w-]+\.webp)"', row)
        found.append(
            {
                "kind": attrs["kind"],
                "status": attrs.get("status"),
                "job_id": attrs.get("job-id"),
                "what": _cell(row, "h-what"),
                "state": _cell(row, "h-status"),
                "amount": _number(_cell(row, "h-amount")),
                "balance": _number(_cell(row, "h-balance")),
                "thumb": thumb.group(1) if thumb else None,
            }
        )
    return found


def page_rows(c, page: int = 1) -> list[dict]:
    response = c.get(f"/billing?page={page}")
    assert response.status_code == 200
    return rows(response.text)


def _last_entry_ids(settings, user_id: int) -> list[int]:
    """Each history row's last ledger entry id, newest row first (a job's: its settlement, if any)."""
    with transaction(settings) as session:
        entries = session.execute(
            select(LedgerEntry.id, LedgerEntry.job_id).where(LedgerEntry.user_id == user_id).order_by(LedgerEntry.id)
        ).all()
    last: dict[str, int] = {}
    order: list[str] = []
    for entry_id, job_id in entries:
        key = job_id or f"entry:{entry_id}"
        if key not in last:
            order.append(key)
        last[key] = entry_id
    return [last[key] for key in reversed(order)]


@pytest.fixture
def ada_on_any_db(any_db_settings, make_client):
    """Ada, logged in, on SQLite and on PostgreSQL: the history's grouping query runs on both."""
    c = make_client(any_db_settings)
    c.sign_up("ada@example.com")
    return c, any_db_settings


# ---- one row per job -------------------------------------------------------------------------


def test_each_job_is_one_row_with_its_prompt_thumbnail_status_and_cost(user_client, settings):
    ada = _user_id(settings, "ada@example.com")
    done = add_job(settings, ada, "a red circle on a blue background", n_images=3, price=12)
    failed = add_job(settings, ada, "two yellow stars", status=JobStatus.FAILED, price=2)
    cancelled = add_job(settings, ada, "a green triangle", status=JobStatus.CANCELLED, price=3)
    running = add_job(settings, ada, "three pink squares", status=JobStatus.RUNNING, price=5)
    queued = add_job(settings, ada, "one white star", status=JobStatus.QUEUED, price=1)

    response = user_client.get("/billing")
    page = response.text
    found = rows(page)
    by_job = {r["job_id"]: r for r in found if r["kind"] == "job"}
    assert [r["job_id"] for r in found if r["kind"] == "job"] == [queued, running, cancelled, failed, done]
    assert all(page.count(f'data-job-id="{j}"') == 1 for j in by_job)  # one row, not HOLD then CAPTURE
    for word in ("CAPTURE", "capture", "HOLD", "image(s)", "Charge captured"):
        assert word not in _text(page), word

    assert by_job[done]["status"] == "succeeded" and by_job[done]["amount"] == -12
    assert "a red circle on a blue background" in by_job[done]["what"] and "3 images" in by_job[done]["what"]
    assert "Done" in by_job[done]["state"]
    assert by_job[failed]["status"] == "failed" and by_job[failed]["amount"] == 0
    assert "nothing charged" in by_job[failed]["state"] and "1 image" in by_job[failed]["what"]
    assert "1 images" not in page
    assert by_job[cancelled]["status"] == "cancelled" and by_job[cancelled]["amount"] == 0
    assert "nothing charged" in by_job[cancelled]["state"]
    assert by_job[running]["status"] == "running" and by_job[running]["amount"] == -5
    assert "5 held" in by_job[running]["state"]
    assert by_job[queued]["status"] == "queued" and "1 held" in by_job[queued]["state"]

    # the thumbnail is the job's first image, through the gallery's own thumbnail route
    with transaction(settings) as session:
        first = session.scalar(select(Job).where(Job.id == done))
        from app.gallery.models import Image

        first_image = session.scalar(select(Image.id).where(Image.job_id == first.id, Image.index == 0))
    assert by_job[done]["thumb"] == f"/images/{first_image}.webp"
    thumb = user_client.get(by_job[done]["thumb"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    assert all(by_job[j]["thumb"] is None for j in (failed, cancelled, running, queued))

    # the newest row's balance is the balance: 200 − 12 (charged) − 5 − 1 (held)
    assert found[0]["balance"] == 200 - 12 - 5 - 1
    with transaction(settings) as session:
        assert found[0]["balance"] == ledger.balance(session, ada)


def test_a_long_prompt_is_truncated_and_a_job_on_a_released_hold_nets_to_zero(user_client, settings):
    ada = _user_id(settings, "ada@example.com")
    prompt = "a lighthouse on a cliff at sunset " * 10
    add_job(settings, ada, prompt, status=JobStatus.FAILED, price=7)
    (job,) = [r for r in page_rows(user_client) if r["kind"] == "job"]
    assert len(job["what"]) < 160 and "…" in job["what"]
    assert job["amount"] == 0 and job["balance"] == 200  # the 7 held came back on the same row


# ---- the running balance -----------------------------------------------------------------------


def test_the_running_balance_is_the_ledgers_balance_after_each_row(ada_on_any_db):
    user_client, settings = ada_on_any_db
    ada = _user_id(settings, "ada@example.com")
    add_job(settings, ada, "a red circle", price=4)
    buy(settings, ada, "starter")  # +1,000
    add_job(settings, ada, "a blue square", status=JobStatus.FAILED, price=2)
    grant(settings, ada, 50, "A gift from the team")
    adjust(settings, ada, -10, "Correction")
    add_job(settings, ada, "a grey star", price=3, n_images=2)
    add_job(settings, ada, "a pink star", status=JobStatus.RUNNING, price=5)

    found = page_rows(user_client)
    after = ledger_balances(settings, ada)
    assert [r["balance"] for r in found] == [after[i] for i in _last_entry_ids(settings, ada)]
    for newer, older in zip(found, found[1:], strict=False):
        assert newer["balance"] == older["balance"] + newer["amount"]
    assert found[-1]["balance"] == found[-1]["amount"] == 200  # the welcome credits come first
    with transaction(settings) as session:
        assert found[0]["balance"] == ledger.balance(session, ada) == ledger.ledger_sum(session, ada)
    assert found[0]["balance"] == 200 - 4 + 1000 + 50 - 10 - 3 - 5
    assert user_client.get("/api/v1/balance").json() == {"balance": found[0]["balance"]}


def test_credits_that_came_back_never_show_as_spent_on_later_rows(user_client, settings):
    """A job held, a grant while it runs, then the job fails: its row nets to zero, and the
    grant's balance does not dip by credits the user got back."""
    ada = _user_id(settings, "ada@example.com")
    job_id = add_job(settings, ada, "a slow one", status=JobStatus.RUNNING, price=9)
    grant(settings, ada, 25, "A gift while it ran")
    from app.generation import service as generation

    assert generation.fail(settings, job_id, "boom")
    gift, job_row, welcome = page_rows(user_client)
    assert gift["kind"] == "grant" and job_row["job_id"] == job_id
    assert (welcome["balance"], job_row["balance"], gift["balance"]) == (200, 200, 225)
    with transaction(settings) as session:
        assert gift["balance"] == ledger.balance(session, ada)  # the newest row: the balance now


# ---- purchases and grants ----------------------------------------------------------------------


def test_purchases_and_grants_are_rows_of_their_own(user_client, settings):
    ada = _user_id(settings, "ada@example.com")
    purchase = buy(settings, ada, "studio")
    grant(settings, ada, 100, "Monthly free credits (2026-12)")
    adjust(settings, ada, -5, "Duplicate credit corrected")
    page = user_client.get("/billing").text
    correction, refill, bought, welcome = rows(page)
    pack = settings.pack("studio")
    assert bought["kind"] == "purchase" and bought["amount"] == pack.credits == 5500
    assert "Bought 5,500 credits" in bought["what"] and "Studio pack" in bought["what"]
    assert f"Paid {pack.price_label}" in bought["what"] or "Paid $50.00" in bought["what"]
    assert f'href="/billing/receipts/{purchase}"' in page
    assert "+5,500" in _text(page) and "5,700" in _text(page)  # thousands separators
    assert welcome["kind"] == "grant" and "Welcome credits" in welcome["what"] and welcome["amount"] == 200
    assert "for signing up" in welcome["what"]
    assert refill["kind"] == "grant" and refill["amount"] == 100
    assert correction["kind"] == "adjustment" and correction["amount"] == -5
    assert correction["balance"] == 200 + 5500 + 100 - 5 == 5795


def test_a_new_user_sees_the_welcome_grant_and_what_will_come(user_client):
    page = user_client.get("/billing").text
    (welcome,) = rows(page)
    assert welcome["kind"] == "grant" and welcome["balance"] == 200
    assert "Nothing generated yet" in page
    assert 'aria-label="History pages"' not in page  # one page: no pager


def test_another_users_rows_are_never_shown(make_client, settings):
    alice, bob = make_client(), make_client()
    alice.sign_up("alice@example.com")
    bob.sign_up("bob@example.com")
    bob_id, alice_id = _user_id(settings, "bob@example.com"), _user_id(settings, "alice@example.com")
    bobs_job = add_job(settings, bob_id, "bob's secret prompt", price=6)
    bobs_purchase = buy(settings, bob_id, "pro")
    add_job(settings, alice_id, "alice's own prompt", price=2)

    alice_page = alice.get("/billing").text
    assert "secret prompt" not in alice_page and bobs_job not in alice_page and bobs_purchase not in alice_page
    assert [r["kind"] for r in rows(alice_page)] == ["job", "grant"]
    assert rows(alice_page)[0]["balance"] == 198
    bob_rows = rows(bob.get("/billing").text)
    assert [r["kind"] for r in bob_rows] == ["purchase", "job", "grant"] and bob_rows[0]["balance"] == 200 - 6 + 12000


def test_the_apis_ledger_keeps_its_shape(user_client, settings):
    ada = _user_id(settings, "ada@example.com")
    job_id = add_job(settings, ada, "a red circle", price=4)
    items = user_client.get("/api/v1/ledger").json()["items"]
    assert [(i["kind"], i["amount"], i["job_id"]) for i in items] == [
        ("capture", 0, job_id),
        ("hold", -4, job_id),
        ("grant", 200, None),
    ]
    assert set(items[0]) == {"id", "kind", "amount", "memo", "job_id", "created_at"}


# ---- pagination ---------------------------------------------------------------------------------


def _many_jobs(settings, user_id: int, n: int) -> list[str]:
    """``n`` succeeded jobs, held and captured through the ledger, in one transaction (fast)."""
    ids = []
    with transaction(settings) as session:
        for i in range(n):
            job_id = str(uuid.uuid4())
            session.add(
                Job(
                    id=job_id,
                    user_id=user_id,
                    client_request_id=job_id,
                    status=JobStatus.SUCCEEDED,
                    mode="txt2img",
                    model="demo",
                    prompt=f"shape number {i}",
                    width=64,
                    height=64,
                    steps=4,
                    guidance=5.0,
                    seed=i,
                    n_images=1,
                    price=1 + i % 3,
                )  # fmt: skip
            )
            session.flush()
            ledger.hold(session, user_id, 1 + i % 3, job_id=job_id, memo="1 image(s)")
            if i % 10 == 3:
                ledger.release(session, user_id, 1 + i % 3, job_id=job_id, memo="Released: the job failed")
            else:
                ledger.capture(session, user_id, job_id=job_id)
            ids.append(job_id)
    return ids


def test_700_jobs_page_through_with_a_continuous_balance(ada_on_any_db):
    user_client, settings = ada_on_any_db
    ada = _user_id(settings, "ada@example.com")
    grant(settings, ada, 2000, "Big gift")
    jobs = _many_jobs(settings, ada, 700)
    total_rows = 700 + 2
    pages = -(-total_rows // HISTORY_PAGE)
    first = user_client.get("/billing").text
    assert f"page 1 of {pages}" in first and 'rel="next"' in first and 'rel="prev"' not in first
    assert "702 entries" in _text(first)

    seen: list[dict] = []
    for page in range(1, pages + 1):
        found = page_rows(user_client, page)
        assert len(found) == (HISTORY_PAGE if page < pages else total_rows - HISTORY_PAGE * (pages - 1))
        seen.extend(found)
    assert [r["job_id"] for r in seen if r["kind"] == "job"] == list(reversed(jobs))  # each job once, newest first
    for newer, older in zip(seen, seen[1:], strict=False):  # across page boundaries too
        assert newer["balance"] == older["balance"] + newer["amount"]
    with transaction(settings) as session:
        assert seen[0]["balance"] == ledger.balance(session, ada)
    after = ledger_balances(settings, ada)
    assert [r["balance"] for r in seen] == [after[i] for i in _last_entry_ids(settings, ada)]
    assert seen[-1]["balance"] == 200

    beyond = user_client.get(f"/billing?page={pages + 1}")
    assert beyond.status_code == 200 and "No entries on this page" in beyond.text
    assert rows(user_client.get("/billing?page=0").text)[0] == seen[0]


# ---- pricing ------------------------------------------------------------------------------------


def _pricing_sizes(page: str) -> dict[str, set[tuple[int, int]]]:
    tables = re.findall(r'<table class="table price-table" data-model="([\w-]+)">(.*?)</table>', page, re.S)
    return {
        model: {(int(w), int(h)) for w, h in re.findall(r'data-size="(\d+)x(\d+)"', body)} for model, body in tables
    }


def _example_credits(page: str, mode: str) -> int:
    block = re.search(rf'<article class="price-example" data-mode="{mode}">(.*?)</article>', page, re.S).group(1)
    return _number(re.search(r'class="price-amount"><strong>([\d,]+)</strong>', block).group(1))


def test_pricing_lists_exactly_the_demo_models_sizes_and_prices_each_mode(make_client, tmp_path):
    fresh = migrated(make_settings(tmp_path / "fresh"))  # a fresh install: the demo model
    page = make_client(fresh).get("/pricing").text
    model = get_catalog(fresh).default
    assert model.source == "builtin:demo"
    assert _pricing_sizes(page) == {model.id: {(p.width, p.height) for p in size_presets(model)}}
    assert "768" not in page and "1024×1024 " not in page.split('id="sizes"')[1]
    _assert_examples(fresh, model, page)
    assert "How it's computed" in page and "<details" in page


def _assert_examples(settings, model, page: str) -> None:
    d, s, m = model.default_size, model.default_steps, model.price_multiplier

    def one(width, height, steps, n=1):
        return pricing.price(settings, width=width, height=height, steps=steps, n_images=n, multiplier=m)

    assert _example_credits(page, "txt2img") == one(d, d, s, 4)
    assert _example_credits(page, "img2img") == one(d, d, round(s * 0.6))
    assert _example_credits(page, "inpaint") == one(d, d, s)
    assert _example_credits(page, "variation") == one(d, d, round(s * 0.35), 4)
    assert _example_credits(page, "outpaint") == one(d + d // 2 // model.size_multiple * model.size_multiple, d, s)
    factor = 4 if 4 * d <= settings.max_upscale_side else 2
    tiles = images.tile_grid(d * factor, d * factor, model.max_size, 64)
    left, top, right, bottom = tiles[0]
    upscale = len(tiles) * one(right - left, bottom - top, max(1, round(s * 0.3)))
    assert _example_credits(page, "upscale") == upscale
    explain = page[page.index('id="upscale"') :]
    assert f"{factor * factor} times the pixels" in explain
    assert f"becomes {d * factor}×{d * factor}: {len(tiles)} tiles" in _text(explain)
    assert f"= {upscale} credits" in _text(explain) or f"= {upscale} credit" in _text(explain)


def test_pricing_shows_the_demo_upscale_range_explained(tmp_path):
    settings = make_settings(tmp_path / "data")  # a fresh install's: the demo model
    from app.credits.routes import pricing_examples

    examples = pricing_examples(settings, get_catalog(settings).default)
    small, large = examples["upscale"], examples["upscale_large"]
    assert (small.source_credits, small.credits) == (1, 18)  # a 1-credit 256² image, 4×: 9 tiles × 2
    assert (large.source_credits, large.credits) == (4, 50)  # a 4-credit 512² image, 4×: 25 tiles × 2
    assert small.pixel_ratio == large.pixel_ratio == 16


def test_pricing_lists_every_catalog_models_sizes(tmp_path, tiny_model_path, tiny_sdxl_model_path, make_client):
    from tests.integration.test_catalog_models import CATALOG

    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG.format(sd=tiny_model_path, xl=tiny_sdxl_model_path))
    two = migrated(make_settings(tmp_path / "two", tiny_model_path, model_catalog=path))
    page = make_client(two).get("/pricing").text
    catalog = get_catalog(two)
    assert _pricing_sizes(page) == {m.id: {(p.width, p.height) for p in size_presets(m)} for m in catalog}
    xl = catalog.get("xl")
    table = re.search(r'data-model="xl">(.*?)</table>', page, re.S).group(1)
    first = size_presets(xl)[0]
    cells = re.search(rf'data-size="{first.width}x{first.height}">(.*?)</tr>', table, re.S).group(1)
    shown = [_number(c) for c in re.findall(r'<td class="num">([\d,]+)</td>', cells)]
    assert shown[1] == pricing.price(
        two, width=first.width, height=first.height, steps=xl.default_steps, n_images=1, multiplier=500.0
    )
    assert "500.0× the base price" in table
    _assert_examples(two, catalog.default, page)


@pytest.mark.parametrize("value", ["abc", "-3", "99999999999"])
def test_odd_page_numbers_never_break_the_page(user_client, value):
    assert user_client.get(f"/billing?page={value}").status_code in (200, 422)


def test_the_upscale_price_macro_says_why_it_costs_more():
    from app.web import templates

    macro = templates.env.from_string(
        '{% from "credits/_price.html" import upscale_price, signed, count %}'
        "{{ upscale_price(50, 4, 512, 512) }}|{{ signed(-1234) }}|{{ signed(5500) }}|{{ count(1, 'image') }}|"
        "{{ count(3, 'image') }}"
    ).render()
    button, minus, plus, one, three = macro.split("|")
    assert '<span class="btn-price"' in button and "50 cr" in button
    assert "2048×2048 · 16× the pixels" in button and "16× the pixels of this 512×512 image" in button
    assert (minus, plus, one, three) == ("−1,234", "+5,500", "1 image", "3 images")
