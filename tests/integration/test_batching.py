"""Batching: queued jobs that share model, mode, size, steps, sampler and guidance run as one
pipeline call, each keeping its own seeds, images, charge, cancel and lease.

The worker's task code runs here, in the test process, on the tiny random pipeline (as
bench/batching.py runs it); the broker messages the submits send are delivered by calling
the task, in order, as a worker would."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from app.accounts.service import sign_up
from app.credits import ledger
from app.credits import service as credits
from app.credits.models import LedgerEntry
from app.db import transaction, utcnow
from app.enums import JobStatus
from app.gallery.models import Image
from app.generation import janitor, schemas, service
from app.generation.models import Job
from app.storage import get_storage
from tests.support import make_settings, migrated
from workers import pipelines, tasks

pytestmark = pytest.mark.model  # runs models in this process (torch)

PASSWORD = "a long enough passphrase"
COMMON = dict(width=64, height=64, steps=4, guidance=5.0, sampler="euler_a")


def pixels(image: PILImage.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_same_image(a: PILImage.Image, b: PILImage.Image) -> None:
    # One batched call groups the UNet's and VAE's arithmetic differently from separate
    # calls (other matmul blockings over a larger batch), so float32 results can differ
    # in the last bits; after rounding to 8-bit pixels that is at most 1-2 levels, and
    # almost never. A different seed or prompt differs by tens of levels nearly everywhere.
    diff = np.abs(pixels(a) - pixels(b))
    assert diff.max() <= 2 and diff.mean() < 0.01, (diff.max(), diff.mean())


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def pipe(request, tmp_path_factory):
    model = request.getfixturevalue("tiny_model" if request.param == "sd1" else "tiny_sdxl_model")
    return pipelines.load(make_settings(tmp_path_factory.mktemp("data"), model), str(model))


@pytest.mark.parametrize("negative", ["", "green"])
def test_same_seeds_give_the_same_images_batched_and_alone(pipe, negative):
    alone = [
        *pipelines.sample(pipe, prompt="a red circle", negative_prompt=negative, seed=5, n_images=2, **COMMON),
        *pipelines.sample(pipe, prompt="a blue square", negative_prompt=negative, seed=9, **COMMON),
    ]
    first, second = pipelines.sample_batch(
        pipe,
        [pipelines.Request("a red circle", negative, 5, 2), pipelines.Request("a blue square", negative, 9, 1)],
        **COMMON,
    )
    assert [seed for _, seed in first + second] == [seed for _, seed in alone] == [5, 6, 9]
    for (a, _), (b, _) in zip(alone, first + second, strict=True):
        assert_same_image(a, b)
    # and the jobs really differ from each other (the test would mean nothing otherwise)
    assert np.abs(pixels(first[0][0]) - pixels(second[0][0])).mean() > 5


def test_a_batch_mixing_empty_and_given_negative_prompts_is_refused(pipe):
    with pytest.raises(ValueError, match="negative prompt"):
        pipelines.sample_batch(
            pipe, [pipelines.Request("a", "", 1, 1), pipelines.Request("b", "green", 2, 1)], **COMMON
        )


# ---- the worker's task code -------------------------------------------------------------


@pytest.fixture
def worker_settings(tmp_path, tiny_model, monkeypatch):
    settings = migrated(make_settings(tmp_path / "data", tiny_model, batch_window_ms=0, max_active_jobs_per_user=0))
    monkeypatch.setattr(tasks, "get_settings", lambda: settings)
    return settings


def new_user(settings, email: str) -> int:
    with transaction(settings) as session:
        account = sign_up(session, email, PASSWORD)
        credits.grant_signup_credits(session, settings, account.id)
        return account.id


def submit(settings, user_id: int, **fields) -> Job:
    values = {"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, "sampler": "euler_a", **fields}
    req = schemas.parse_request(values, settings)
    return service.submit(settings, user_id, req, "")


def row(settings, job_id: str) -> Job:
    with transaction(settings) as session:
        return session.get_one(Job, job_id)


def balance(settings, user_id: int) -> int:
    with transaction(settings) as session:
        assert ledger.balance(session, user_id) == ledger.ledger_sum(session, user_id) >= 0
        return ledger.balance(session, user_id)


def stored_images(settings, job_id: str) -> list[PILImage.Image]:
    storage = get_storage(settings)
    with transaction(settings) as session:
        keys = session.scalars(select(Image.storage_key).where(Image.job_id == job_id).order_by(Image.index)).all()
    return [PILImage.open(io.BytesIO(storage.get(key))) for key in keys]


def deliver(*jobs: Job) -> None:
    """Each job's broker message, in the order they were sent, as the worker takes them."""
    for job in jobs:
        tasks.generate(job.id)


@pytest.fixture
def writers(monkeypatch):
    """The attempt writers the task code starts, by job id."""
    made: dict[str, tasks.AttemptWriter] = {}

    class Recorded(tasks.AttemptWriter):
        def __init__(self, settings, job, storage):
            super().__init__(settings, job, storage)
            made[job.id] = self

    monkeypatch.setattr(tasks, "AttemptWriter", Recorded)
    return made


def test_compatible_jobs_of_several_users_run_as_one_call_each_charged_its_own(worker_settings, monkeypatch, writers):
    settings = worker_settings
    ada, bob = new_user(settings, "ada@example.com"), new_user(settings, "bob@example.com")
    jobs = [
        submit(settings, ada, seed=5, n_images=2),
        submit(settings, bob, prompt="a blue square", seed=9),
        submit(settings, ada, prompt="two yellow stars", seed=11),
    ]
    other_steps = submit(settings, bob, steps=3, seed=1)  # not compatible: runs on its own
    other_negative = submit(settings, bob, negative_prompt="green", seed=2)  # nor this
    calls: list[int] = []
    real = pipelines.sample_batch
    monkeypatch.setattr(
        pipelines, "sample_batch", lambda pipe, reqs, **kw: calls.append(len(reqs)) or real(pipe, reqs, **kw)
    )
    deliver(*jobs, other_steps, other_negative)

    assert calls == [3]  # one call for the three; the others alone (not through sample_batch)
    assert {row(settings, j.id).attempts for j in jobs} == {1}  # the later deliveries were skipped
    for job in [*jobs, other_steps, other_negative]:
        assert row(settings, job.id).status == JobStatus.SUCCEEDED
    assert balance(settings, ada) == 200 - jobs[0].price - jobs[2].price
    assert balance(settings, bob) == 200 - jobs[1].price - other_steps.price - other_negative.price
    # each job's images are the ones it makes alone, from its own seeds and prompt
    pipe = pipelines.load(settings, str(settings.model))
    for job in jobs:
        got = stored_images(settings, job.id)
        want = pipelines.sample(
            pipe,
            prompt=job.prompt,
            seed=job.seed,
            n_images=job.n_images,
            width=job.width,
            height=job.height,
            steps=job.steps,
            guidance=job.guidance,
            sampler=job.sampler,
        )
        assert len(got) == job.n_images
        for image, (expected, _) in zip(got, want, strict=True):
            assert_same_image(image, expected)
    assert all(not w._thread.is_alive() for w in writers.values())  # every writer stopped


def test_a_cancel_in_one_job_stops_and_releases_only_that_job_at_once(worker_settings, monkeypatch, writers):
    settings = worker_settings
    ada, bob = new_user(settings, "ada@example.com"), new_user(settings, "bob@example.com")
    kept, cancelled = submit(settings, ada, seed=5), submit(settings, bob, seed=9, n_images=2)
    seen: dict[int, str] = {}
    real = pipelines.sample_batch

    def cancel_during_the_call(pipe, requests, *, on_step, **kwargs):
        def step(done, total, latents):
            if done == 1:
                service.request_cancel(settings, bob, cancelled.id)
                writers[cancelled.id]._write()  # the writer's next renewal reads the Cancel
            on_step(done, total, latents)
            seen[done] = row(settings, cancelled.id).status

        return real(pipe, requests, on_step=step, **kwargs)

    monkeypatch.setattr(pipelines, "sample_batch", cancel_during_the_call)
    deliver(kept, cancelled)

    assert seen[1] == JobStatus.CANCELLED  # settled at the step it was seen, not after the call
    assert seen[4] == JobStatus.CANCELLED  # while the call ran on for the other job
    assert row(settings, kept.id).status == JobStatus.SUCCEEDED
    assert stored_images(settings, cancelled.id) == []
    assert balance(settings, bob) == 200  # released
    assert balance(settings, ada) == 200 - kept.price  # captured


def test_a_failing_call_fails_each_job_releasing_each_hold(worker_settings, monkeypatch):
    settings = worker_settings
    ada, bob = new_user(settings, "ada@example.com"), new_user(settings, "bob@example.com")
    jobs = [submit(settings, ada, seed=5), submit(settings, bob, seed=9)]

    def broken(*_args, **_kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(pipelines, "sample_batch", broken)
    deliver(*jobs)
    for job in jobs:
        failed = row(settings, job.id)
        assert (failed.status, failed.attempts) == (JobStatus.FAILED, 1)
        assert "CUDA out of memory" in failed.error
    assert balance(settings, ada) == balance(settings, bob) == 200


def test_a_job_that_lost_its_lease_mid_batch_runs_once_and_is_charged_once(worker_settings, monkeypatch, writers):
    """The janitor requeued one job of the batch (its lease ran out): this attempt drops it
    and records nothing for it; its next delivery runs it alone, once, charged once."""
    settings = worker_settings
    ada, bob = new_user(settings, "ada@example.com"), new_user(settings, "bob@example.com")
    kept, lost = submit(settings, ada, seed=5), submit(settings, bob, seed=9)
    real = pipelines.sample_batch

    def lose_during_the_call(pipe, requests, *, on_step, **kwargs):
        def step(done, total, latents):
            if done == 2:
                with transaction(settings) as session:
                    session.get_one(Job, lost.id).lease_expires_at = utcnow()
                janitor.sweep(settings)  # requeues it (unsent) for another attempt
                writers[lost.id]._write()  # the writer's next renewal finds the job gone
            on_step(done, total, latents)

        return real(pipe, requests, on_step=step, **kwargs)

    monkeypatch.setattr(pipelines, "sample_batch", lose_during_the_call)
    tasks.generate(kept.id)
    assert row(settings, kept.id).status == JobStatus.SUCCEEDED
    requeued = row(settings, lost.id)
    assert (requeued.status, requeued.attempts) == (JobStatus.QUEUED, 1)
    assert stored_images(settings, lost.id) == []
    assert balance(settings, bob) == 200 - lost.price  # still only held

    tasks.generate(lost.id)  # the requeued delivery: a second attempt, alone
    done = row(settings, lost.id)
    assert (done.status, done.attempts) == (JobStatus.SUCCEEDED, 2)
    assert len(stored_images(settings, lost.id)) == 1
    with transaction(settings) as session:
        kinds = [e.kind for e in session.scalars(select(LedgerEntry).where(LedgerEntry.job_id == lost.id))]
    assert kinds.count(ledger.CAPTURE) == 1 and ledger.RELEASE not in kinds
    assert balance(settings, bob) == 200 - lost.price


def test_batching_off_runs_each_job_alone(tmp_path, tiny_model, monkeypatch):
    settings = migrated(make_settings(tmp_path / "data", tiny_model, batch_max_images=1))
    monkeypatch.setattr(tasks, "get_settings", lambda: settings)
    user = new_user(settings, "ada@example.com")
    jobs = [submit(settings, user, seed=s) for s in (1, 2)]
    monkeypatch.setattr(pipelines, "sample_batch", None)  # never called
    deliver(*jobs)
    assert [row(settings, j.id).status for j in jobs] == [JobStatus.SUCCEEDED] * 2
