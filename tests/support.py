"""Helpers shared by every test layer: settings built from explicit values, the
environment that hands them to another process, a real worker process, a client
that behaves like a browser, and waiting for jobs and threads.

Fixtures live in the conftest files and stay thin; what they do is here.
"""

from __future__ import annotations

import atexit
import email
import email.policy
import functools
import json
import os
import re
import select
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from app.config import REPO_ROOT, Settings
from tests.support_worker import READY_FD_ENV

PASSWORD = "a long enough passphrase"

# The limits the integration tests are written against: a tiny pipeline paints 64² in 4 steps.
TEST_MODEL_SETTINGS: dict[str, Any] = dict(
    model_name="Tiny test model",
    model_default_size=64,
    model_max_size=128,
    model_default_steps=4,
    signup_grant_credits=200,
)


def make_settings(data_dir: Path, test_model: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings from defaults and these arguments only: no ``GOUACHE_`` variables, no ``.env``
    file, so no test depends on what the shell exported.

    ``test_model`` (a tiny pipeline's folder, built or not: only workers load it) brings
    :data:`TEST_MODEL_SETTINGS`; without it the settings are a fresh install's. ``overrides``
    win over both (``model=`` names another model with its own defaults)."""
    values: dict[str, Any] = {} if test_model is None else {"model": str(test_model), **TEST_MODEL_SETTINGS}
    values.update(overrides)
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.upper().startswith("GOUACHE_"):
                mp.delenv(name)
        return Settings(_env_file=None, data_dir=data_dir, **values)


def migrated(settings: Settings) -> Settings:
    """These settings, their database at the newest migration. A new SQLite database is a
    copy of one migrated once per run: hundreds of tests make one, and migrating costs ~0.1 s."""
    from app.migrate import upgrade

    database = settings.data_dir / "gouache.db"
    if settings.database_url == f"sqlite:///{database}" and not database.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_migrated_sqlite_database(), database)
    else:
        upgrade(settings)
    return settings


@functools.cache
def _migrated_sqlite_database() -> Path:
    from app.db import get_engine
    from app.migrate import upgrade

    folder = Path(tempfile.mkdtemp(prefix="gouache-migrated-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    settings = make_settings(folder / "data")
    upgrade(settings)
    get_engine(settings).dispose()
    copy = folder / "gouache.db"
    with closing(sqlite3.connect(settings.data_dir / "gouache.db")) as source, closing(sqlite3.connect(copy)) as to:
        source.backup(to)  # a consistent copy, whatever is still in the write-ahead log
    return copy


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives another process (a worker, uvicorn, the CLI) these settings:
    where things are, and every setting the test chose (leases, S3, limits ...), each as the
    ``GOUACHE_*`` variable an operator would set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOUACHE_")}
    chosen = settings.model_dump(mode="json", include=settings.model_fields_set)
    chosen.update(
        data_dir=str(settings.data_dir),
        database_url=settings.database_url,
        broker_url=settings.broker_url,
        storage_dir=str(settings.storage_dir),
        device="cpu",
    )
    for name, value in chosen.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (list, dict)):
            value = json.dumps(value)
        env[f"GOUACHE_{name.upper()}"] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Worker:
    """A real `gouache worker` process consuming the queues of the catalog's models
    (or only of ``models``, comma-separated ids).

    It runs through ``tests.support_worker``, which writes to a pipe when Celery sends
    ``worker_ready``; the pipe also reaches end-of-file when the process exits, so
    :meth:`wait_ready` waits for one event or the other."""

    def __init__(self, settings: Settings, log_path: Path, models: str | None = None):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self._ready, ready_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support_worker", "worker", "--loglevel", "INFO"]
                + (["--models", models] if models else []),
                cwd=REPO_ROOT,
                env={**settings_env(settings), READY_FD_ENV: str(ready_w)},
                pass_fds=(ready_w,),
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        finally:
            os.close(ready_w)  # only the worker holds the write end

    def wait_ready(self, timeout: float = 120) -> None:
        readable, _, _ = select.select([self._ready], [], [], timeout)
        if not readable:
            raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log_path.read_text()}")
        if not os.read(self._ready, 64):
            self.proc.wait(timeout=10)
            raise RuntimeError(f"worker exited ({self.proc.returncode}):\n{self.log_path.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._ready)
        self._log.close()


class Browserless:
    """A TestClient that behaves like a browser: keeps cookies and sends the CSRF token."""

    def __init__(self, app):
        from fastapi.testclient import TestClient

        self.http = TestClient(app, follow_redirects=False)
        self.http.get("/login")  # receive the CSRF cookie like a first visit

    @property
    def csrf(self) -> str:
        return self.http.cookies["gouache_csrf"]

    def form(self, url: str, data: dict) -> Any:
        return self.http.post(url, data={**data, "csrf_token": self.csrf})

    def api_post(self, url: str, json: dict, **headers) -> Any:
        return self.http.post(url, json=json, headers={"X-CSRF-Token": self.csrf, **headers})

    def get(self, url: str, **kw):
        return self.http.get(url, **kw)

    def sign_up(self, email: str, password: str = PASSWORD, *, confirm: bool = True):
        """Sign up and, unless ``confirm`` is false, follow the link of the confirmation email
        (from the outbox) as its owner would: logged in, with the welcome credits."""
        response = self.form("/signup", {"email": email, "password": password})
        assert response.status_code == 303, response.text
        if confirm:
            self.confirm_email(email)
        return response

    def confirm_email(self, address: str) -> Any:
        settings = self.http.app.state.settings
        confirmed = self.form(link_path(outbox_link(settings.outbox_dir, address, "/email/verify/")), {})
        assert confirmed.status_code == 303, confirmed.text
        return confirmed


# ---- email: what the outbox folder (or an SMTP server) received ---------------------------------


# Each web server process a test started, by its URL: its outbox folder (tests/browser/conftest.py
# fills it; kept here because pytest may import a conftest twice, under two names).
OUTBOXES: dict[str, Path] = {}


def read_outbox(outbox_dir: Path) -> list[email.message.EmailMessage]:
    """The messages written to the outbox folder, oldest first (the names start with the time)."""
    if not outbox_dir.is_dir():
        return []
    return [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
        for path in sorted(outbox_dir.glob("*.eml"))
    ]


def links_in(message: email.message.EmailMessage) -> list[str]:
    body = message.get_body(("plain",))
    return re.findall(r"https?://\S+", body.get_content() if body is not None else "")


def outbox_link(outbox_dir: Path, to: str, path: str, timeout: float = 15) -> str:
    """The newest link whose path starts with ``path`` in a message to ``to`` in the outbox.
    A server sends after its response, so this waits for the message (up to ``timeout``)."""
    to = to.strip().lower()
    deadline = time.monotonic() + timeout
    while True:
        for message in reversed(read_outbox(outbox_dir)):
            if str(message["To"]).lower() == to:
                found = [link for link in links_in(message) if urlsplit(link).path.startswith(path)]
                if found:
                    return found[-1]
        if time.monotonic() > deadline:
            raise AssertionError(f"no email to {to} with a {path} link in {outbox_dir}")
        time.sleep(0.05)


class SmtpSink:
    """A real SMTP server on loopback (aiosmtpd, in its own thread) that keeps what it receives.

    ``users``: accepted logins (AUTH PLAIN/LOGIN, allowed without TLS on loopback); with none,
    the server offers no AUTH."""

    def __init__(self, users: dict[str, str] | None = None):
        from aiosmtpd.controller import Controller

        self.messages: list[email.message.EmailMessage] = []
        self.logins: list[str] = []
        self._arrived = threading.Condition()
        self._users = users or {}
        self.port = _free_port()
        auth = dict(authenticator=self._authenticate, auth_require_tls=False) if users else {}
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, **auth)

    def __enter__(self) -> SmtpSink:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    def settings(self, **more: Any) -> dict[str, Any]:
        """The settings that send mail here."""
        return dict(smtp_host="127.0.0.1", smtp_port=self.port, smtp_tls="none", **more)

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd's handler hook
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._arrived:
            self.messages.append(message)  # type: ignore[arg-type]
            self._arrived.notify_all()
        return "250 OK"

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = isinstance(auth_data, LoginPassword) and self._users.get(auth_data.login.decode()) == (
            auth_data.password.decode()
        )
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok)

    def to(self, address: str) -> list[email.message.EmailMessage]:
        with self._arrived:
            return self.to_unlocked(address)

    def wait_for(self, address: str, count: int = 1, timeout: float = 15) -> list[email.message.EmailMessage]:
        """The messages to ``address`` once there are ``count`` of them."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.to_unlocked(address)) >= count, timeout):
                raise AssertionError(f"{len(self.to_unlocked(address))} emails to {address}, not {count}")
            return self.to_unlocked(address)

    def to_unlocked(self, address: str) -> list[email.message.EmailMessage]:
        return [m for m in self.messages if str(m["To"]).lower() == address.lower()]

    def link(self, address: str, path: str, count: int = 1) -> str:
        """The link starting with ``path`` in the ``count``-th message to ``address``."""
        message = self.wait_for(address, count)[count - 1]
        return next(link for link in links_in(message) if urlsplit(link).path.startswith(path))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def link_path(link: str) -> str:
    """The path of an emailed link, to request through a test client on any base URL."""
    return urlsplit(link).path


def wait_for_job(c: Browserless, job_id: str, timeout: float = 180) -> dict:
    """Poll the job's API until it is settled (the same polling the page does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/api/v1/generations/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.25)
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")


def run_threads(n: int, target) -> list:
    """Run target(i) on n threads released together; return results or exceptions."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def body(i):
        barrier.wait()
        try:
            results[i] = target(i)
        except Exception as e:  # collected for the assertions
            results[i] = e

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
