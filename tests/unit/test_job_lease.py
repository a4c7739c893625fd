"""The job row is the record: claims count attempts and start a lease, every worker-side
write names its attempt, the janitor recovers what dies (a worker, a web process between
commit and send), the per-user cap holds nothing, and housekeeping keeps leftovers bounded.

No worker process here: a test plays the worker by calling the same service functions."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update

from app.accounts.models import LoginSession
from app.accounts.service import sign_up
from app.credits import ledger
from app.credits import service as credits
from app.credits.models import LedgerEntry
from app.db import transaction, utcnow
from app.errors import TooManyJobs
from app.generation import janitor, schemas, service
from app.generation.models import Job
from app.queue import BROKER_MESSAGE_TABLE, prune_broker
from app.storage import get_storage, input_key, preview_key

PASSWORD = "a long enough passphrase"


@pytest.fixture
def db(make_settings, tmp_path):
    """A migrated database (and broker, and storage) of its own: the janitor sweeps every
    job, so each test starts from none."""
    from app.migrate import upgrade

    settings = make_settings(tmp_path, max_active_jobs_per_user=3, job_max_attempts=3)
    upgrade(settings)
    return settings


@pytest.fixture
def user(db, new_email) -> int:
    with transaction(db) as session:
        account = sign_up(session, new_email(), PASSWORD)
        credits.grant_signup_credits(session, db, account.id)
        return account.id


def submit(settings, user_id: int, request_id: str = "", **fields):
    req = schemas.parse_request({"prompt": "a red circle", "steps": 4, **fields}, settings)
    return service.submit(settings, user_id, req, request_id)


def balance(settings, user_id: int) -> int:
    with transaction(settings) as session:
        assert ledger.balance(session, user_id) == ledger.ledger_sum(session, user_id) >= 0
        return ledger.balance(session, user_id)


def job_row(settings, job_id: str) -> Job:
    with transaction(settings) as session:
        return session.get_one(Job, job_id)


def settle_entries(settings, job_id: str) -> list[str]:
    with transaction(settings) as session:
        return list(
            session.scalars(
                select(LedgerEntry.kind).where(LedgerEntry.job_id == job_id, LedgerEntry.kind != ledger.HOLD)
            )
        )


def expire_lease(settings, job_id: str) -> None:
    """What a dead worker does to its job: nothing, until the lease runs out."""
    with transaction(settings) as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def age(settings, job_id: str, seconds: float, *columns: str) -> None:
    past = utcnow() - timedelta(seconds=seconds)
    with transaction(settings) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**dict.fromkeys(columns, past)))


def messages_for(settings, job_id: str) -> int:
    """Undelivered messages naming the job in the embedded broker."""
    from sqlalchemy import create_engine

    engine = create_engine(settings.broker_url.removeprefix("sqla+"))
    try:
        with engine.connect() as connection:
            if not connection.dialect.has_table(connection, BROKER_MESSAGE_TABLE):
                return 0
            payloads = connection.execute(
                text(f"SELECT payload FROM {BROKER_MESSAGE_TABLE} WHERE visible = :yes"), {"yes": True}
            ).scalars()
            return sum(job_id in _body(p) for p in payloads)
    finally:
        engine.dispose()


def _body(payload: str) -> str:
    import base64
    import json

    message = json.loads(payload)
    return base64.b64decode(message["body"]).decode() if message.get("body") else ""


def stored(image_id: int = 0) -> service.StoredImage:
    return service.StoredImage(key=f"images/x/y/{image_id}.png", thumb_key=None, index=0, seed=1, width=64, height=64)


# ---- claims, attempts and leases ---------------------------------------------------------


def test_a_claim_counts_the_attempt_and_starts_a_lease_and_a_redelivery_finds_it_held(db, user):
    job = submit(db, user)
    assert job.sent_at is not None and job.attempts == 0  # committed, then sent
    claimed = service.claim(db, job.id)
    assert claimed is not None and claimed.attempts == 1 and claimed.status == "running"
    lease_left = (claimed.lease_expires_at - utcnow()).total_seconds()
    assert db.job_lease_s - 5 < lease_left <= db.job_lease_s
    assert service.claim(db, job.id) is None  # the same message delivered twice


def test_a_job_whose_lease_expired_is_taken_over_and_the_old_attempt_changes_nothing(db, user):
    job = submit(db, user)
    first = service.claim(db, job.id)
    expire_lease(db, job.id)
    second = service.claim(db, job.id)  # the broker redelivered it before the janitor looked
    assert second is not None and second.attempts == 2

    # the first worker wakes up: its progress, failure, cancel and result are all refused
    assert service.renew(db, job.id, first.attempts, step=3).held is False
    assert service.fail(db, job.id, "boom", first.attempts) is False
    assert service.settle_cancelled(db, job.id, first.attempts) is False
    assert service.succeed(db, first, [stored()]) is False
    assert job_row(db, job.id).status == "running" and settle_entries(db, job.id) == []

    assert service.renew(db, job.id, second.attempts, step=3).held is True
    assert service.succeed(db, second, [stored()]) is True
    assert service.succeed(db, second, [stored()]) is False  # completes at most once
    assert settle_entries(db, job.id) == [ledger.CAPTURE]  # charged once
    assert balance(db, user) == 200 - job.price


def test_no_attempt_is_claimed_past_the_maximum(db, user):
    job = submit(db, user)
    for attempt in range(1, db.job_max_attempts + 1):
        assert service.claim(db, job.id).attempts == attempt
        expire_lease(db, job.id)
    assert service.claim(db, job.id) is None  # the janitor fails it instead
    report = janitor.sweep(db, housekeeping=False)
    assert report.failed == 1 and job_row(db, job.id).status == "failed"
    assert settle_entries(db, job.id) == [ledger.RELEASE] and balance(db, user) == 200


def test_a_renewal_extends_the_lease_records_progress_and_reads_the_cancel(db, user):
    job = submit(db, user)
    claimed = service.claim(db, job.id)
    before = job_row(db, job.id).lease_expires_at
    time.sleep(0.01)
    lease = service.renew(db, job.id, claimed.attempts, step=2)
    assert lease == service.Lease(held=True, cancel_requested=False)
    row = job_row(db, job.id)
    assert row.progress_step == 2 and row.lease_expires_at > before
    service.request_cancel(db, user, job.id)
    assert service.renew(db, job.id, claimed.attempts, extend=False).cancel_requested is True
    assert job_row(db, job.id).lease_expires_at == row.lease_expires_at  # a stuck pipeline's lease runs out


# ---- the janitor -----------------------------------------------------------------------


def test_the_janitor_requeues_and_resends_a_job_whose_worker_died(db, user):
    job = submit(db, user)
    service.claim(db, job.id)
    expire_lease(db, job.id)
    report = janitor.sweep(db, housekeeping=False)
    assert (report.requeued, report.sent) == (1, 1)
    row = job_row(db, job.id)
    assert row.status == "queued" and row.sent_at is not None and row.attempts == 1
    assert messages_for(db, job.id) == 2  # the first delivery was lost with its worker; a new one
    assert service.claim(db, job.id).attempts == 2
    assert janitor.sweep(db, housekeeping=False).requeued == 0  # a live lease is left alone


def test_a_cancelled_job_whose_worker_died_ends_cancelled_and_released(db, user):
    job = submit(db, user)
    service.claim(db, job.id)
    service.request_cancel(db, user, job.id)  # the worker would stop at the next step, but it is dead
    expire_lease(db, job.id)
    assert janitor.sweep(db, housekeeping=False).cancelled == 1
    assert job_row(db, job.id).status == "cancelled" and balance(db, user) == 200


def test_a_crash_between_commit_and_send_leaves_a_job_that_a_retry_or_the_janitor_sends(db, user, monkeypatch):
    def web_process_dies(*_args, **_kwargs):
        raise SystemExit("killed between the commit and the send")

    with monkeypatch.context() as m:
        m.setattr(service, "send_generate", web_process_dies)
        with pytest.raises(SystemExit):
            submit(db, user, "retry-me")
    ghost = job_row(db, service._job_by_request(db, user, "retry-me").id)
    assert ghost.status == "queued" and ghost.sent_at is None and messages_for(db, ghost.id) == 0
    assert balance(db, user) == 200 - ghost.price  # held, with the row: both or neither

    # a retry at once finds the job its own first request may still be sending
    assert submit(db, user, "retry-me").id == ghost.id and messages_for(db, ghost.id) == 0
    assert janitor.sweep(db, housekeeping=False).sent == 0
    age(db, ghost.id, service.UNSENT_GRACE_S + 1, "created_at")
    # later, the Idempotency-Key retry sends it and returns a job that really runs
    retried = submit(db, user, "retry-me")
    assert retried.id == ghost.id and retried.sent_at is not None and messages_for(db, ghost.id) == 1
    assert janitor.sweep(db, housekeeping=False).sent == 0  # sent once


def test_the_janitor_sends_a_job_whose_web_process_died_before_sending(db, user, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(service, "send_generate", lambda *a, **k: (_ for _ in ()).throw(SystemExit("killed")))
        with pytest.raises(SystemExit):
            submit(db, user, "ghost")
    ghost = service._job_by_request(db, user, "ghost")
    age(db, ghost.id, service.UNSENT_GRACE_S + 1, "created_at")
    assert janitor.sweep(db, housekeeping=False).sent == 1
    assert job_row(db, ghost.id).sent_at is not None and messages_for(db, ghost.id) == 1
    assert service.claim(db, ghost.id) is not None


# ---- fair sharing ------------------------------------------------------------------------


def test_one_job_past_the_cap_is_refused_with_a_clear_message_and_holds_nothing(db, user):
    jobs = [submit(db, user) for _ in range(db.max_active_jobs_per_user)]
    held = balance(db, user)
    with transaction(db) as session:
        count_before = session.scalar(select(func.count()).select_from(Job).where(Job.user_id == user))
    with pytest.raises(TooManyJobs) as refused:
        submit(db, user)
    assert refused.value.status_code == 429
    assert "3 jobs queued or running" in refused.value.message and "nothing was charged" in refused.value.message
    with transaction(db) as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.user_id == user)) == count_before
    assert balance(db, user) == held
    # one finishes: there is room for the next
    service.fail(db, jobs[0].id, "done")
    assert submit(db, user).status == "queued"


def test_a_refused_image_job_leaves_no_inputs_behind(db, user):
    from PIL import Image

    from app.generation import images

    for _ in range(db.max_active_jobs_per_user):
        submit(db, user)
    req = schemas.parse_request({"mode": "img2img", "prompt": "a boat", "steps": 4}, db)
    upload = images.png(Image.new("RGB", (96, 64), "teal"))
    with pytest.raises(TooManyJobs):
        service.submit(db, user, req, "", {"image": upload})
    objects = db.storage_dir / "inputs" / str(user)
    assert not objects.exists() or not any(p.is_file() for p in objects.rglob("*"))


# ---- housekeeping ----------------------------------------------------------------------------


def test_housekeeping_deletes_finished_previews_old_inputs_expired_sessions_and_delivered_messages(db, user):
    storage = get_storage(db)
    finished = submit(db, user)
    running = submit(db, user)
    for job in (finished, running):
        claimed = service.claim(db, job.id)
        storage.put(preview_key(user, job.id), b"jpeg", "image/jpeg")
        service.renew(db, job.id, claimed.attempts, step=1, preview_key=preview_key(user, job.id))
        if job is finished:
            source = input_key(user, job.id, "source")
            storage.put(source, b"png", "image/png")
            with transaction(db) as session:
                session.execute(update(Job).where(Job.id == job.id).values(source_key=source))
            service.fail(db, job.id, "the worker was killed before it deleted its preview")
    with transaction(db) as session:
        session.add(LoginSession(id="e" * 64, user_id=user, expires_at=utcnow() - timedelta(seconds=1)))
        session.add(LoginSession(id="f" * 64, user_id=user, expires_at=utcnow() + timedelta(days=1)))

    report = janitor.sweep(db.model_copy(update={"input_retention_s": 3600}))
    assert report.previews == 1 and report.inputs == 0 and report.sessions >= 1
    assert not storage.exists(preview_key(user, finished.id)) and job_row(db, finished.id).preview_key is None
    assert storage.exists(preview_key(user, running.id))  # still live
    assert storage.exists(input_key(user, finished.id, "source"))  # within the retention

    age(db, finished.id, 3601, "finished_at")
    assert janitor.sweep(db.model_copy(update={"input_retention_s": 3600})).inputs == 1
    assert not storage.exists(input_key(user, finished.id, "source")) and job_row(db, finished.id).source_key is None
    with transaction(db) as session:
        assert set(session.scalars(select(LoginSession.id).where(LoginSession.user_id == user))) == {"f" * 64}


def test_the_embedded_broker_keeps_only_undelivered_messages(db, user):
    from sqlalchemy import create_engine

    submit(db, user)
    engine = create_engine(db.broker_url.removeprefix("sqla+"))
    with engine.begin() as connection:
        total = connection.execute(text(f"SELECT count(*) FROM {BROKER_MESSAGE_TABLE}")).scalar_one()
        # as kombu marks a message it delivered
        connection.execute(text(f"UPDATE {BROKER_MESSAGE_TABLE} SET visible = :no"), {"no": False})
    submit(db, user)  # one more, undelivered
    assert prune_broker(db) == total
    with engine.connect() as connection:
        assert connection.execute(text(f"SELECT count(*) FROM {BROKER_MESSAGE_TABLE}")).scalar_one() == 1
    engine.dispose()


def test_run_sweeps_until_stopped(db):
    stop = threading.Event()
    thread = threading.Thread(target=janitor.run, args=(db, stop, 0.05))
    thread.start()
    time.sleep(0.2)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()


# ---- the worker's writer: one thread per attempt ------------------------------------------


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the writer did not get there")
        time.sleep(0.02)


@pytest.fixture
def attempt(db, user):
    job = submit(db, user)
    return service.claim(db, job.id)


def test_the_pipeline_hands_steps_over_and_never_writes_to_the_database_itself(db, attempt, monkeypatch):
    from workers import lease

    writers: list[str] = []
    real_renew = service.renew

    def renew(*args, **kwargs):
        writers.append(threading.current_thread().name)
        time.sleep(0.2)  # a slow database: only the writer thread waits for it
        return real_renew(*args, **kwargs)

    monkeypatch.setattr(lease.service, "renew", renew)
    writer = lease.AttemptWriter(db, attempt, get_storage(db)).start()
    started = time.monotonic()
    step = 0
    while time.monotonic() - started < 1.0:  # a pipeline doing 200 steps a second
        step += 1
        writer.step(step)
        writer.check()
        time.sleep(0.005)
    wait_until(lambda: job_row(db, attempt.id).progress_step == step)  # the latest value wins
    writer.stop()
    assert writers and threading.current_thread().name not in writers
    assert len(writers) <= 1.5 / lease.PROGRESS_EVERY_S  # at most ~4 writes a second, not 200


def test_the_writer_renews_the_lease_while_nothing_moves(make_settings, tmp_path, new_email):
    from app.migrate import upgrade
    from workers import lease

    settings = make_settings(tmp_path, job_lease_s=3)  # renewed every second
    upgrade(settings)
    with transaction(settings) as session:
        account = sign_up(session, new_email(), PASSWORD)
        credits.grant_signup_credits(session, settings, account.id)
    claimed = service.claim(settings, submit(settings, account.id).id)
    writer = lease.AttemptWriter(settings, claimed, get_storage(settings)).start()
    first = claimed.lease_expires_at
    wait_until(lambda: job_row(settings, claimed.id).lease_expires_at > first)  # a model loading, say
    writer.stop()


def test_the_step_after_the_writer_reads_a_cancel_stops_the_pipeline(db, user, attempt):
    from workers import lease

    writer = lease.AttemptWriter(db, attempt, get_storage(db)).start()
    service.request_cancel(db, user, attempt.id)
    writer.step(1)
    wait_until(lambda: writer.cancel_requested)
    writer.stop()
    with pytest.raises(lease.JobCancelled):
        writer.check()


def test_an_attempt_that_lost_its_lease_stops_at_its_next_step_and_leaves_no_late_preview(db, user, attempt):
    from workers import lease

    storage = get_storage(db)
    expire_lease(db, attempt.id)
    service.claim(db, attempt.id)  # the next attempt runs it now...
    service.fail(db, attempt.id, "...and it ended")
    writer = lease.AttemptWriter(db, attempt, storage).start()
    writer.step(1, preview=lambda: b"late jpeg")
    wait_until(lambda: not writer.held)
    writer.stop()
    with pytest.raises(lease.JobLost):
        writer.check()
    assert not storage.exists(preview_key(user, attempt.id))
    assert job_row(db, attempt.id).progress_step == 0
