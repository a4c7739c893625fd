"""Delete my account: the images, thumbnails, inputs and previews leave storage; jobs,
collections, sessions and the address go; the ledger keeps its rows on an anonymous
tombstone, and its sums still hold. Another user's things stay."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.accounts.models import AccountToken, LoginSession, User
from app.admin import service as admin
from app.admin.models import AdminAction
from app.credits import ledger
from app.credits.models import PAID, LedgerEntry, Purchase
from app.db import transaction
from app.enums import JobStatus
from app.gallery import collections
from app.gallery.models import Collection, CollectionImage, Image
from app.generation.models import Job
from app.main import create_app
from app.storage import get_storage, input_key, preview_key
from tests.gallery_data import add_image
from tests.support import PASSWORD, Browserless, make_settings, migrated, read_outbox


@pytest.fixture(params=["filesystem", "s3"])
def storage_settings(request, tmp_path, tiny_model_path):
    if request.param == "filesystem":
        return migrated(make_settings(tmp_path / "data", tiny_model_path))
    return migrated(
        make_settings(
            tmp_path / "data", tiny_model_path, storage="s3",
            s3_endpoint_url=request.getfixturevalue("s3_endpoint"), s3_bucket=request.getfixturevalue("bucket"),
        )
    )  # fmt: skip


def stored_keys(settings) -> set[str]:
    """Every object in the store, listed by the store's own means."""
    if settings.storage == "s3":
        s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1")
        return {o["Key"] for o in s3.list_objects_v2(Bucket=settings.s3_bucket).get("Contents", [])}
    root = Path(settings.storage_dir)
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def theirs(keys: set[str], user_id: int) -> set[str]:
    return {k for k in keys if k.split("/")[1:2] == [str(user_id)]}


def user_id_of(settings, email: str) -> int:
    with transaction(settings) as session:
        return session.scalars(select(User.id).where(User.email == email)).one()


def active_job(settings, owner: int, status: JobStatus, steps: int) -> int:
    """A job submitted through the API (its hold taken), then, if asked, running with an
    input image and a live preview in storage, as a worker would leave it."""
    c = Browserless(create_app(settings))
    c.form("/login", {"email": "ada@example.com", "password": PASSWORD})
    job = c.api_post("/api/v1/generations", {"prompt": "a cat", "width": 64, "height": 64, "steps": steps, "n": 1})
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    storage = get_storage(settings)
    storage.put(input_key(owner, job_id, "source"), b"png", "image/png")
    storage.put(preview_key(owner, job_id), b"jpeg", "image/jpeg")
    with transaction(settings) as session:
        row = session.get_one(Job, job_id)
        row.status, row.preview_key = status, preview_key(owner, job_id)
    return job.json()["price"]


def a_studio_life(settings) -> tuple[Browserless, int, int, list[int]]:
    """Ada: confirmed, a purchase, two images (one in a collection), a queued and a running job.
    Bob: one image. Returns Ada's browser, her id, Bob's id and the prices Ada's active jobs hold."""
    ada = Browserless(create_app(settings))
    ada.sign_up("ada@example.com")
    bob = Browserless(create_app(settings))
    bob.sign_up("bob@example.com")
    ada_id, bob_id = user_id_of(settings, "ada@example.com"), user_id_of(settings, "bob@example.com")
    images = [add_image(settings, ada_id, f"ada's picture {i}") for i in range(2)]
    add_image(settings, bob_id, "bob's picture")
    with transaction(settings) as session:
        purchase = Purchase(
            id=str(uuid.uuid4()), user_id=ada_id, pack_id="starter", credits=1000, amount=1000, currency="usd",
            provider="test", status=PAID,
        )  # fmt: skip
        session.add(purchase)
        session.flush()
        ledger.credit_purchase(session, ada_id, 1000, purchase_id=purchase.id, memo="Bought 1000 credits")
        collections.collect(session, ada_id, images[:1], "", new_name="Favourites")
    held = [active_job(settings, ada_id, JobStatus.QUEUED, 4), active_job(settings, ada_id, JobStatus.RUNNING, 8)]
    return ada, ada_id, bob_id, held


def test_deleting_an_account_leaves_nothing_of_theirs_in_storage(storage_settings):
    settings = storage_settings
    ada, ada_id, bob_id, _held = a_studio_life(settings)
    before = stored_keys(settings)
    assert {k.split("/")[0] for k in theirs(before, ada_id)} == {"images", "inputs", "previews"}
    bobs = theirs(before, bob_id)
    assert len(bobs) == 2  # a PNG and its thumbnail

    page = ada.get("/account/delete")
    assert page.status_code == 200 and "Delete my account" in page.text
    gone = ada.form("/account/delete", {"password": PASSWORD})
    assert gone.status_code == 303 and gone.headers["location"] == "/goodbye"

    after = stored_keys(settings)
    assert theirs(after, ada_id) == set()
    assert theirs(after, bob_id) == bobs  # Bob keeps his


def test_the_ledger_keeps_its_rows_on_an_anonymous_tombstone(any_db_settings):
    settings = any_db_settings
    ada, ada_id, bob_id, held = a_studio_life(settings)
    assert admin.grant(settings, admin.CLI, ada_id, 5, "a goodwill gesture", request_id="goodwill")
    with transaction(settings) as session:
        entries_before = set(session.scalars(select(LedgerEntry.id).where(LedgerEntry.user_id == ada_id)))
        balance_before = ledger.balance(session, ada_id)
    cookie = ada.http.cookies["gouache_session"]

    wrong = ada.form("/account/delete", {"password": "not my password"})
    assert wrong.status_code == 422 and "current password is not right" in wrong.text
    assert ada.form("/account/delete", {"password": PASSWORD}).status_code == 303

    with transaction(settings) as session:
        user = session.get_one(User, ada_id)
        assert user.email == f"deleted-{ada_id}@invalid" and user.deleted_at is not None
        assert not user.verified
        for model in (Job, Image, Collection, LoginSession, AccountToken):
            count = select(func.count()).select_from(model).where(model.user_id == ada_id)
            assert session.scalar(count) == 0, model.__name__
        assert session.scalar(select(func.count()).select_from(CollectionImage)) == 0
        # every earlier entry stays; the holds of the two active jobs came back, then the
        # unused credits were written off: balance and sum are both 0
        entries = session.execute(
            select(LedgerEntry.id, LedgerEntry.kind, LedgerEntry.amount, LedgerEntry.memo).where(
                LedgerEntry.user_id == ada_id
            )
        ).all()
        assert entries_before <= {e.id for e in entries}
        added = sorted((e.kind, e.amount) for e in entries if e.id not in entries_before)
        assert added == sorted([("adjustment", -(balance_before + sum(held)))] + [("release", p) for p in held])
        assert ledger.balance(session, ada_id) == ledger.ledger_sum(session, ada_id) == 0
        assert ledger.audit(session) == []
        assert session.scalar(select(func.count()).select_from(Purchase).where(Purchase.user_id == ada_id)) == 1
        assert session.scalar(select(func.count()).select_from(Image).where(Image.user_id == bob_id)) == 1
        audit = session.scalars(select(AdminAction).where(AdminAction.target_user_id == ada_id)).all()
        assert [(a.action, a.target) for a in audit] == [("grant", f"deleted-{ada_id}@invalid")]  # no address left

    replay = TestClient(ada.http.app, follow_redirects=False, cookies={"gouache_session": cookie})
    assert replay.get("/account").status_code == 303
    visitor = Browserless(create_app(settings))
    assert visitor.form("/login", {"email": "ada@example.com", "password": PASSWORD}).status_code == 422
    assert visitor.form("/login", {"email": f"deleted-{ada_id}@invalid", "password": "!deleted"}).status_code == 422
    visitor.sign_up("ada@example.com")  # the address is free again: a new account, new credits
    assert user_id_of(settings, "ada@example.com") != ada_id


def test_the_goodbye_page_and_email(settings, user_client):
    assert user_client.form("/account/delete", {"password": PASSWORD}).status_code == 303
    assert "Your account was deleted" in user_client.get("/goodbye").text
    last = read_outbox(settings.outbox_dir)[-1]
    assert last["To"] == "ada@example.com" and last["Subject"] == "Your Gouache account was deleted"
