"""`gouache dev` as a person runs it: it says it is running only once the web answers
and the worker is ready, it restarts a worker that dies, and SIGTERM leaves nothing
behind (no worker re-parented to PID 1, still taking jobs)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from app.config import REPO_ROOT
from tests.processes import Output, alive, descendants, free_port, session_left, session_members, start_gouache_dev
from tests.support import settings_env, wait_for_job

pytestmark = pytest.mark.worker


class Dev:
    def __init__(self, proc: subprocess.Popen, out: Output, port: int):
        self.proc, self.out, self.port = proc, out, port

    def running(self) -> None:
        self.out.wait_for(rf"Gouache is running at http://127\.0\.0\.1:{self.port}/", timeout=240)

    def pid_of(self, name: str) -> int:
        return int(self.out.wait_for(rf"started {name} \(pid (\d+)\)").group(1))


@pytest.fixture
def dev(settings, tiny_model, tmp_path) -> Iterator[Dev]:  # the worker loads the tiny model
    port = free_port()
    proc = start_gouache_dev(settings_env(settings), port, REPO_ROOT)
    yield Dev(proc, Output(proc, tmp_path / "dev.log"), port)
    for pid in session_members(proc.pid):  # only if a test failed half-way
        os.kill(pid, signal.SIGKILL)
    proc.wait()


def test_sigterm_to_gouache_dev_leaves_no_process_behind(dev):
    dev.running()
    with urllib.request.urlopen(f"http://127.0.0.1:{dev.port}/healthz", timeout=5) as response:
        assert response.status == 200  # "running" means the web answers
    web, worker = dev.pid_of("web"), dev.pid_of("worker")
    tree = descendants(dev.proc.pid)
    assert {web, worker} <= tree

    started = time.monotonic()
    dev.proc.send_signal(signal.SIGTERM)
    code = dev.proc.wait(timeout=30)
    took = time.monotonic() - started
    print(f"gouache dev stopped {took:.1f} s after SIGTERM")

    assert code == 0
    assert [pid for pid in tree if alive(pid)] == []
    assert session_left(dev.proc.pid) == {}  # nothing it started, whatever its process group
    assert took < 10, dev.out.text


def test_kill_9_to_gouache_dev_takes_its_children_with_it(dev):
    """Nothing can clean up after SIGKILL but the kernel: the children's parent-death signal."""
    dev.running()
    tree = descendants(dev.proc.pid)
    assert {dev.pid_of("web"), dev.pid_of("worker")} <= tree
    started = time.monotonic()
    dev.proc.send_signal(signal.SIGKILL)
    dev.proc.wait(timeout=10)
    left = session_left(dev.proc.pid, timeout=20)
    print(f"gouache dev killed with -9: its children gone {time.monotonic() - started:.1f} s later")
    assert left == {}, left


def test_a_worker_killed_with_kill_9_is_restarted_and_the_next_job_completes(dev, user_client):
    dev.running()
    worker = dev.pid_of("worker")

    os.kill(worker, signal.SIGKILL)
    dev.out.wait_for(rf"worker \(pid {worker}\) exited with code -9 after [\d.]+ s; restarting it in 1 s \(restart 1\)")
    again = int(dev.out.wait_for(r"worker is ready again \(pid (\d+)\)", timeout=240).group(1))
    assert again != worker and not alive(worker)

    submitted = user_client.api_post(
        "/api/v1/generations", {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2}
    )
    assert submitted.status_code == 202, submitted.text
    job = wait_for_job(user_client, submitted.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert len(job["images"]) == 1

    dev.proc.send_signal(signal.SIGTERM)
    assert dev.proc.wait(timeout=30) == 0
    assert session_left(dev.proc.pid) == {}
