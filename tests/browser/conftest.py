from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.config import REPO_ROOT
from tests.support import OUTBOXES, PASSWORD, Worker, make_settings, migrated, outbox_link, settings_env

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def web_server(settings, log_path: Path) -> Iterator[str]:
    """uvicorn in its own process on a free port; yields its URL once it accepts connections."""
    port = _free_port()
    log = open(log_path, "w")
    web = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "web", "--port", str(port)],
        cwd=REPO_ROOT,
        env=settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    assert settings.outbox_dir is not None
    OUTBOXES[url] = settings.outbox_dir
    try:
        yield url
    finally:
        web.terminate()
        web.wait(timeout=10)
        log.close()


def sign_up_in_browser(page, url: str, email: str, password: str = PASSWORD) -> None:
    """Fill the sign-up form, then confirm the address from the email in the server's outbox,
    as a newcomer would: logged in with the welcome credits, on the Create page."""
    from playwright.sync_api import expect

    page.goto(f"{url}/signup")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    confirm_in_browser(page, url, email)


def confirm_in_browser(page, url: str, email: str) -> None:
    from playwright.sync_api import expect

    page.goto(outbox_link(OUTBOXES[url], email, "/email/verify/"))
    page.get_by_role("button", name="Confirm my email").click()
    expect(page.get_by_text("Your email address is confirmed")).to_be_visible()
    page.get_by_role("link", name="Start creating").click()
    expect(page.locator("#balance")).to_be_visible()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, tiny_model):
    """uvicorn and a Celery worker as separate processes, like `gouache dev` (test checkout on)."""
    tmp = tmp_path_factory.mktemp("live")
    settings = migrated(make_settings(tmp / "data", tiny_model, test_checkout=True))
    worker = Worker(settings, tmp / "worker.log")
    with web_server(settings, tmp / "web.log") as url:
        worker.wait_ready()
        yield url
        worker.stop()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def shoot(page):
    """Save a screenshot under test-artifacts/ (for people to look at, not asserted)."""
    ARTIFACTS.mkdir(exist_ok=True)

    def shoot(name: str) -> None:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    return shoot
