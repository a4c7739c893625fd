"""Nothing blocks the event loop: while one request waits on something slow, the
server's other requests are answered in their normal time.

The app runs under a real uvicorn on loopback (in a thread). Each story starts one
slow thing, waits until it is under way, and then times a few quick requests: each
must answer within its normal time plus ``SLACK_S``. To add a story, start another
slow thing with :func:`in_flight` and call :func:`assert_answers_promptly`.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from app.accounts.models import User
from app.credits import ledger
from app.db import transaction
from app.generation.catalog import BUILTIN_TINY_MODEL
from app.main import create_app
from tests.integration.fake_stripe import FakeStripe, payload, sign
from tests.support import PASSWORD, link_path, make_settings, migrated, outbox_link

T = TypeVar("T")

SLACK_S = 0.2  # how much longer than normal a quick request may take while something slow runs
SLOW_S = 60.0  # the slow thing's own limit; each story releases it as soon as it has measured
# A static file (the loop alone), a page and a price quote (the thread pool and the database).
QUICK = ("/static/css/app.css", "/login", "/api/v1/quote?size=128x128&steps=4&n=2")
WEBHOOK_SECRET = "whsec_test"


# ---- the server and the measuring ------------------------------------------------------------


@contextmanager
def live_server(app) -> Iterator[str]:
    """``app`` under uvicorn on a loopback port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections wait in the backlog until uvicorn serves: no start-up polling
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def time_get(http: httpx.Client, path: str, timeout: float = 10.0) -> float:
    start = time.perf_counter()
    response = http.get(path, timeout=timeout)
    elapsed = time.perf_counter() - start
    assert response.status_code == 200, f"GET {path}: {response.status_code}"
    return elapsed


def normal_times(url: str, paths=QUICK, rounds: int = 5) -> dict[str, float]:
    """Each quick request's median time with nothing else running (after one warm-up)."""
    with httpx.Client(base_url=url) as http:
        for path in paths:
            time_get(http, path)
        return {path: statistics.median(time_get(http, path) for _ in range(rounds)) for path in paths}


@contextmanager
def in_flight(
    slow: Callable[[], T], *, under_way: threading.Event, release: Callable[[], None] = lambda: None
) -> Iterator[Future[T]]:
    """Run ``slow`` on a thread; enter once ``under_way`` is set. On leaving, ``release``
    lets it finish and it is waited for (its result or error is in the future)."""
    with ThreadPoolExecutor(1, thread_name_prefix="slow") as pool:
        future = pool.submit(slow)
        try:
            while not under_way.wait(0.05):
                if future.done():
                    future.result()  # raises what stopped it
                    raise AssertionError("the slow thing finished before it was seen under way")
            yield future
        finally:
            release()
            future.exception(timeout=SLOW_S + 30)


def assert_answers_promptly(url: str, normal: dict[str, float]) -> None:
    """Each quick request answers within its normal time plus SLACK_S (a fresh connection,
    as a second browser tab would open)."""
    with httpx.Client(base_url=url) as http:
        for path, usual in normal.items():
            limit = usual + SLACK_S
            try:
                took = time_get(http, path, timeout=limit + 1.0)
            except httpx.TimeoutException:
                pytest.fail(f"GET {path} got no answer in {limit + 1.0:.1f}s while the slow request ran")
            assert took <= limit, f"GET {path} took {took:.3f}s (normally {usual:.3f}s) while the slow request ran"


# ---- the stories --------------------------------------------------------------------------------


@pytest.fixture
def fake():
    with FakeStripe() as server:
        yield server


@pytest.fixture
def stripe_settings(tmp_path, fake):
    return migrated(
        make_settings(
            tmp_path / "data",
            BUILTIN_TINY_MODEL,
            stripe_secret_key="sk_test_x",
            stripe_webhook_secret=WEBHOOK_SECRET,
            stripe_api_base=fake.url,
        )
    )


def signed_up(browser: httpx.Client, settings, email: str = "ada@example.com") -> str:
    """Sign up and follow the emailed confirmation link (from the outbox); returns the CSRF token."""
    browser.get("/login")
    csrf = browser.cookies["gouache_csrf"]
    response = browser.post("/signup", data={"email": email, "password": PASSWORD, "csrf_token": csrf})
    assert response.status_code == 303, response.text
    link = outbox_link(settings.outbox_dir, email, "/email/verify/")
    confirmed = browser.post(link_path(link), data={"csrf_token": csrf})
    assert confirmed.status_code == 303, confirmed.text
    return csrf


def paid_checkout(url: str, fake: FakeStripe, settings) -> str:
    """A buyer signs up, clicks Buy and pays on Stripe's page; returns the Checkout Session id."""
    with httpx.Client(base_url=url) as browser:
        csrf = signed_up(browser, settings)
        bought = browser.post("/billing/checkout", data={"pack": "starter", "csrf_token": csrf})
        assert bought.status_code == 303, bought.text
    session_id = next(iter(fake.sessions))
    fake.pay(session_id)
    return session_id


def test_a_slow_stripe_does_not_hold_up_other_requests(stripe_settings, fake):
    with live_server(create_app(stripe_settings)) as url:
        event = fake.checkout_completed_event(paid_checkout(url, fake, stripe_settings))
        normal = normal_times(url)
        body = payload(event)

        def deliver() -> httpx.Response:
            return httpx.post(
                f"{url}/billing/webhook", content=body, headers=sign(body, WEBHOOK_SECRET), timeout=SLOW_S + 30
            )

        fake.slow_down(SLOW_S)  # the webhook re-reads the session from Stripe, which now takes its time
        with in_flight(deliver, under_way=fake.arrived, release=fake.release) as webhook:
            assert_answers_promptly(url, normal)

    delivered = webhook.result()
    assert delivered.status_code == 200 and delivered.json()["outcome"] == "purchase paid"
    with transaction(stripe_settings) as session:
        user_id = session.scalar(select(User.id).where(User.email == "ada@example.com"))
        assert ledger.balance(session, user_id) == stripe_settings.signup_grant_credits + 1000


class SlowStore:
    """The real store, but reading an original waits until released (a slow S3)."""

    def __init__(self, store) -> None:
        self.store = store
        self.reading = threading.Event()
        self.go_on = threading.Event()

    def get(self, key: str) -> bytes:
        self.reading.set()
        self.go_on.wait(SLOW_S)
        return self.store.get(key)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_large_zip_download_does_not_hold_up_other_requests(tmp_path, monkeypatch):
    import io
    import zipfile

    from app.gallery import export
    from app.storage import get_storage
    from tests.gallery_data import add_image

    settings = migrated(make_settings(tmp_path / "data", BUILTIN_TINY_MODEL))
    slow = SlowStore(get_storage(settings))
    monkeypatch.setattr(export, "get_storage", lambda _settings: slow)
    with live_server(create_app(settings)) as url:
        with httpx.Client(base_url=url) as browser:
            csrf = signed_up(browser, settings)
            with transaction(settings) as session:
                ada = session.scalar(select(User.id).where(User.email == "ada@example.com"))
            ids = [add_image(settings, ada, f"picture {i}", size=(512, 512), colour=(i, 90, 200)) for i in range(24)]
            normal = normal_times(url)

            def download() -> httpx.Response:
                return browser.post(
                    "/gallery/download",
                    data={"ids": ids, "csrf_token": csrf},
                    timeout=SLOW_S + 30,
                )

            with in_flight(download, under_way=slow.reading, release=slow.go_on.set) as zipped:
                assert_answers_promptly(url, normal)

    response = zipped.result()
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert len([n for n in archive.namelist() if n.endswith(".png")]) == 24


def test_open_event_streams_hold_no_thread(tmp_path):
    """More streams than the thread pool has threads, all waiting on a job no worker takes:
    each holds only its connection, so other requests answer in their normal time."""
    streams = 45  # the thread pool runs 40 at once
    settings = migrated(make_settings(tmp_path / "data", BUILTIN_TINY_MODEL, api_events_poll_s=1.0))
    with live_server(create_app(settings)) as url:
        with httpx.Client(base_url=url) as browser:
            csrf = signed_up(browser, settings)
            job = browser.post(
                "/api/v1/generations", json={"prompt": "a queue that never moves"}, headers={"X-CSRF-Token": csrf}
            ).json()
            cookies = dict(browser.cookies)
        normal = normal_times(url)
        listening, all_listening, leave = [], threading.Event(), threading.Event()
        lock = threading.Lock()

        def listen(_: int) -> str:
            with httpx.Client(base_url=url, cookies=cookies, timeout=SLOW_S) as http:
                with http.stream("GET", f"/api/v1/generations/{job['id']}/events") as stream:
                    seen = ""
                    for text in stream.iter_text():
                        seen += text
                        if "event: progress" in seen:
                            break
                    with lock:
                        listening.append(1)
                        if len(listening) == streams:
                            all_listening.set()
                    leave.wait(SLOW_S)
                    return seen

        def listen_all() -> list[str]:
            with ThreadPoolExecutor(streams) as pool:
                return list(pool.map(listen, range(streams)))

        with in_flight(listen_all, under_way=all_listening, release=leave.set) as listened:
            assert_answers_promptly(url, normal)
    assert all('"status":"queued"' in seen for seen in listened.result())
