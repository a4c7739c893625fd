"""The supervisor behind `gouache dev`, on stand-in processes (no web, no worker): it
restarts what exits with a growing pause, gives up on what never started, and SIGTERM
stops everything it started in time, even a child that ignores SIGTERM and that
child's own children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from app.config import REPO_ROOT
from app.ops.supervisor import backoff_s
from tests.processes import Output, alive, descendants, session_left, session_members

SLEEPER = "import time; time.sleep(600)"
# Ignores SIGTERM, and starts a grandchild (in its own process group) that does too.
IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
STUBBORN = textwrap.dedent(
    f"""
    import subprocess, sys
    subprocess.Popen([sys.executable, "-c", {IGNORES_SIGTERM!r}])
    {IGNORES_SIGTERM}
    """
)
SHORT_LIVED = "import time; time.sleep(1.0)"
FAILS_AT_ONCE = "import sys; sys.exit(3)"


def supervise(tmp_path, processes: dict[str, str], stop_within_s: float = 3.0, thread: str = ""):
    """Start a supervisor process running ``processes`` (name -> Python source), and a
    thread ``ticker`` running ``thread`` (the source of a function of the stop event)."""
    script = textwrap.dedent(
        f"""
        import sys
        from app.ops.supervisor import Supervisor
        supervisor = Supervisor(stop_within_s={stop_within_s}, first_backoff_s=0.1, backoff_cap_s=0.4, settle_s=0.5)
        for name, source in {processes!r}.items():
            supervisor.process(name, [sys.executable, "-c", source])
        if {thread!r}:
            supervisor.thread("ticker", {thread or "None"})
        sys.exit(supervisor.run(on_ready=lambda: print("ALL READY", file=sys.stderr, flush=True)))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, Output(proc)


@pytest.fixture
def cleanup():
    started: list[subprocess.Popen] = []
    yield started.append
    for proc in started:
        for pid in session_members(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def test_the_pause_before_a_restart_doubles_up_to_a_cap():
    assert [backoff_s(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff_s(1000) == 30


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_every_process_it_started_even_ones_that_ignore_sigterm(tmp_path, cleanup, sig):
    proc, out = supervise(tmp_path, {"sleeper": SLEEPER, "stubborn": STUBBORN}, thread="lambda stop: stop.wait()")
    cleanup(proc)
    out.wait_for("ALL READY", timeout=60)
    tree = descendants(proc.pid)
    deadline = time.monotonic() + 30
    while len(tree) < 3 and time.monotonic() < deadline:  # the grandchild is on its way
        time.sleep(0.05)
        tree = descendants(proc.pid)
    assert len(tree) == 3, tree  # sleeper, stubborn, stubborn's child

    started = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(timeout=20) == 0
    took = time.monotonic() - started

    assert [pid for pid in tree if alive(pid)] == []
    assert session_left(proc.pid) == {}
    assert took < 3 + 2, out.text  # the allowance this supervisor was given (3 s), and some slack
    out.wait_for(r"stubborn \(pid \d+\) did not stop in time: killing it")
    out.wait_for(r"sleeper \(pid \d+\) stopped with code -15")


def test_a_process_that_exits_is_restarted_with_a_growing_pause_each_time_logged(tmp_path, cleanup):
    proc, out = supervise(tmp_path, {"sleeper": SLEEPER, "flaky": SHORT_LIVED})
    cleanup(proc)
    out.wait_for("ALL READY", timeout=60)
    first = out.wait_for(r"flaky \(pid (\d+)\) exited with code 0 after [\d.]+ s; restarting it in 0.1 s \(restart 1\)")
    out.wait_for(r"flaky \(pid (\d+)\) exited with code 0 after [\d.]+ s; restarting it in 0.2 s \(restart 2\)")
    out.wait_for(r"restarting it in 0.4 s \(restart 3\)")
    out.wait_for(r"restarting it in 0.4 s \(restart 4\)")  # capped
    assert not alive(int(first.group(1)))

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert session_left(proc.pid) == {}


def test_a_process_that_fails_before_it_was_ever_ready_stops_everything(tmp_path, cleanup):
    proc, out = supervise(tmp_path, {"sleeper": SLEEPER, "broken": FAILS_AT_ONCE})
    cleanup(proc)
    assert proc.wait(timeout=30) == 1
    out.wait_for(r"broken \(pid \d+\) exited with code 3 before it was ready; stopping")
    assert "ALL READY" not in out.text
    assert session_left(proc.pid) == {}


def test_a_supervised_thread_that_fails_is_restarted_and_its_error_logged(tmp_path, cleanup):
    proc, out = supervise(tmp_path, {"sleeper": SLEEPER}, thread="lambda stop: 1 / 0")
    cleanup(proc)
    out.wait_for(r"ticker failed:")
    out.wait_for(r"ZeroDivisionError")
    out.wait_for(r"after [\d.]+ s; restarting it in 0.1 s \(restart 1\)")
    out.wait_for(r"ticker failed:", after=len(out.lines))
    out.wait_for(r"restarting it in 0.2 s \(restart 2\)")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
