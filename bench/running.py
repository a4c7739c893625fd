"""A running Gouache for the benchmarks: uvicorn and a real worker process on a temp
data dir, and a logged-in HTTP client, as a user and an operator would have them.

Used by bench/serving.py and bench/gallery_load.py; not a benchmark itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "a long enough benchmark passphrase"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of the service's processes: the defaults (the embedded SQLite
    database and broker, the demo model) on ``data_dir``, plus ``settings``
    (``broker_url="redis://..."`` → ``GOUACHE_BROKER_URL``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOUACHE_")}
    env.update(
        GOUACHE_DATA_DIR=str(data_dir),
        GOUACHE_DEVICE="cpu",
        GOUACHE_SIGNUP_GRANT_CREDITS="1000000",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT),
    )
    env.update({f"GOUACHE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class Process:
    """A child process with its output in a log file; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.log_path.name} exited:\n{self.log_path.read_text()[-3000:]}")

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def start_worker(env: dict[str, str], log_path: Path, timeout: float = 180) -> Process:
    """``gouache worker``, once it says it is ready (its model loaded)."""
    worker = Process([sys.executable, "-m", "workers.cli", "worker", "--loglevel=INFO"], env, log_path)
    deadline = time.monotonic() + timeout
    while " ready." not in log_path.read_text():
        worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker not ready:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    return worker


def start_web(env: dict[str, str], log_path: Path, argv: list[str] | None = None, timeout: float = 60) -> tuple:
    """uvicorn serving ``app.main:create_app`` (or ``argv``, given the port at its end);
    returns (process, base URL) once it answers."""
    port = free_port()
    argv = argv or [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--log-level", "warning"]
    web = Process([*argv, "--port", str(port)], env, log_path)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        web.check_alive()
        try:
            if httpx.get(f"{base}/login", timeout=2).status_code == 200:
                return web, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"web not answering:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)


def signed_up(base: str, email: str | None = None) -> httpx.Client:
    """A client logged in as a new user (cookies kept; the CSRF header sent)."""
    client = httpx.Client(base_url=base, timeout=60)
    client.get("/signup").raise_for_status()
    csrf = client.cookies["gouache_csrf"]
    email = email or f"bench-{uuid.uuid4().hex[:8]}@example.com"
    response = client.post("/signup", data={"email": email, "password": PASSWORD, "csrf_token": csrf})
    if response.status_code != 303:
        raise RuntimeError(f"sign-up failed: {response.status_code} {response.text[:500]}")
    client.headers["x-csrf-token"] = csrf
    return client
