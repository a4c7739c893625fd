"""An operator runs several web processes on one port with `gouache web --workers N`;
they all answer, and stopping the command stops every one of them."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request

from app.config import REPO_ROOT
from tests.processes import Output, alive, descendants, free_port, session_left
from tests.support import settings_env


def test_gouache_web_with_two_workers_serves_from_two_processes(settings, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "web", "--port", str(port), "--workers", "2"],
        cwd=REPO_ROOT,
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out = Output(proc, tmp_path / "web.log")
    try:
        started = r"Started server process \[(\d+)\]"
        first = out.wait_for(started, timeout=120)
        second = out.wait_for(started, timeout=120, after=len(out.lines))  # the line after the first
        servers = {int(first.group(1)), int(second.group(1))}
        assert len(servers) == 2 and servers <= descendants(proc.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
            assert response.status == 200

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert [pid for pid in servers if alive(pid)] == []
        assert session_left(proc.pid) == {}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
