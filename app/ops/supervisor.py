"""The supervisor behind ``gouache dev``: it starts the web process, a worker and any
supervised threads, restarts what exits, says when everything is ready, and stops
everything it started when asked.

- A process that exits after it was once ready is restarted after a pause that doubles
  with each quick failure (1, 2, 4 ... seconds, capped), and every restart is logged. One
  that exits before it was ever ready (a port in use, a broken setting) stops the whole
  supervisor: restarting it would only repeat the error.
- SIGTERM or SIGINT stops every child within ``stop_within_s`` (10 s): SIGTERM first,
  SIGKILL to whatever is left. Each child runs in its own process group, so a Ctrl-C in
  the terminal reaches the supervisor alone (which then stops the children in order), and
  the group is killed too, so a child's own children never outlive it. A supervisor
  killed with -9 cannot do that: its children have a parent-death signal (Linux), so
  the kernel sends them SIGTERM.
- Readiness: the web answers an HTTP probe; a Celery worker writes the file named by
  ``GOUACHE_WORKER_READY_FILE`` when Celery's ``worker_ready`` signal fires
  (``workers/readiness.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

READY_FILE_ENV = "GOUACHE_WORKER_READY_FILE"

TICK_S = 0.2
PROBE_EVERY_S = 0.5
# A process that ran this long before exiting counts as having recovered: its next
# restart starts the backoff again from the first pause.
STABLE_AFTER_S = 60.0


def backoff_s(failures: int, *, first_s: float = 1.0, cap_s: float = 30.0) -> float:
    """The pause before the restart that follows ``failures`` quick failures in a row."""
    return min(cap_s, first_s * 2 ** min(failures, 32))


def http_ok(url: str, timeout_s: float = 1.0) -> Callable[[], bool]:
    """A readiness probe: ``url`` answers 200."""

    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    return probe


def _print(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class _Process:
    name: str
    argv: list[str]
    env: dict[str, str] | None
    probe: Callable[[], bool] | None
    ready_file: bool
    about: str = ""
    proc: subprocess.Popen | None = None
    ready_path: Path | None = None
    started_at: float = 0.0
    ready: bool = False
    ever_ready: bool = False
    probed_at: float = 0.0
    failures: int = 0  # quick failures in a row
    restarts: int = 0
    restart_at: float = 0.0


@dataclass
class _Thread:
    name: str
    target: Callable[[threading.Event], object]
    thread: threading.Thread | None = None
    started_at: float = 0.0
    failures: int = 0
    restarts: int = 0
    restart_at: float = 0.0
    error: str = field(default="")


class Supervisor:
    """Processes and threads run together until a signal stops them all.

    One line adds one more supervised thing: ``process(name, argv, ...)`` for a
    command, ``thread(name, target)`` for ``target(stop_event)`` in this process."""

    def __init__(
        self,
        log: Callable[[str], None] = _print,
        *,
        stop_within_s: float = 10.0,
        backoff_cap_s: float = 30.0,
        first_backoff_s: float = 1.0,
        settle_s: float = 1.0,
    ):
        self.log = log
        self.stop_within_s = stop_within_s
        self.backoff_cap_s = backoff_cap_s
        self.first_backoff_s = first_backoff_s
        self.settle_s = settle_s
        self._processes: list[_Process] = []
        self._threads: list[_Thread] = []
        self._stopping_threads = threading.Event()
        self._signals = 0
        self._dir: Path | None = None

    def process(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        ready: Callable[[], bool] | None = None,
        ready_file: bool = False,
        about: str = "",
    ) -> None:
        """Supervise the command ``argv``. It is ready when ``ready()`` is true, or with
        ``ready_file`` when it has written the file named by ``GOUACHE_WORKER_READY_FILE``
        (a new name for each start), or, when neither is given, once it has run for
        ``settle_s`` (1 s) without exiting. ``about`` says what it serves, after its pid
        in the line that says it started."""
        self._processes.append(_Process(name, argv, env, ready, ready_file, about))

    def thread(self, name: str, target: Callable[[threading.Event], object]) -> None:
        """Supervise ``target(stop)`` on a thread of this process; it should return soon
        after ``stop`` is set. It counts as ready once started."""
        self._threads.append(_Thread(name, target))

    # running ---------------------------------------------------------------------

    def run(self, on_ready: Callable[[], None] = lambda: None) -> int:
        """Start everything, call ``on_ready`` once when every process is first ready, and
        tend them until SIGTERM or SIGINT (exit code 0) or until a process fails before it
        was ever ready (1). Everything started is stopped before this returns."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        code = 0
        try:
            with tempfile.TemporaryDirectory(prefix="gouache-dev-") as tmp:
                self._dir = Path(tmp)
                for p in self._processes:
                    self._start(p)
                for t in self._threads:
                    self._start_thread(t)
                announced = False
                while not self._signals:
                    if any(self._tend(p) for p in self._processes):
                        code = 1
                        break
                    for t in self._threads:
                        self._tend_thread(t)
                    if not announced and all(p.ready for p in self._processes):
                        announced = True
                        on_ready()
                    time.sleep(TICK_S)
                if self._signals:
                    self.log("stopping everything")
                self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Only a counter: a signal handler must not take locks the main thread may hold.
        self._signals += 1

    def _start(self, p: _Process) -> None:
        env = dict(os.environ if p.env is None else p.env)
        if p.ready_file:
            assert self._dir is not None
            p.ready_path = self._dir / f"{p.name}-{p.restarts}.ready"
            env[READY_FILE_ENV] = str(p.ready_path)
        # Its own process group: Ctrl-C reaches the supervisor alone, and the whole
        # group (the child's own children included) can be stopped at once. And a parent-
        # death signal: a supervisor killed with -9 cannot stop its children, the kernel does.
        p.proc = subprocess.Popen(p.argv, env=env, process_group=0, preexec_fn=_die_with_parent(os.getpid()))
        p.started_at = time.monotonic()
        p.ready = False
        self.log(f"started {p.name} (pid {p.proc.pid})" + (f" {p.about}" if p.about else ""))

    def _is_ready(self, p: _Process) -> bool:
        if p.ready_path is not None:
            return p.ready_path.exists()
        if p.probe is not None:
            if time.monotonic() - p.probed_at < PROBE_EVERY_S:
                return False
            p.probed_at = time.monotonic()
            return p.probe()
        return time.monotonic() - p.started_at >= self.settle_s

    def _tend(self, p: _Process) -> bool:
        """Look after one process; True when the supervisor must give up."""
        now = time.monotonic()
        if p.proc is None:
            if now >= p.restart_at:
                self._start(p)
            return False
        if not _exited(p.proc):
            if not p.ready and self._is_ready(p):
                p.ready = True
                if p.ever_ready:
                    self.log(f"{p.name} is ready again (pid {p.proc.pid})")
                else:
                    self.log(f"{p.name} is ready (pid {p.proc.pid}, {now - p.started_at:.1f} s after it started)")
                p.ever_ready = True
            return False
        pid = p.proc.pid
        _signal_group(p.proc, signal.SIGKILL)  # anything it started goes with it
        code = _reap(p.proc)
        if not p.ever_ready:
            self.log(f"{p.name} (pid {pid}) exited with code {code} before it was ready; stopping")
            p.proc = None
            return True
        ran = now - p.started_at
        if ran >= STABLE_AFTER_S:
            p.failures = 0
        delay = backoff_s(p.failures, first_s=self.first_backoff_s, cap_s=self.backoff_cap_s)
        p.failures += 1
        p.restarts += 1
        p.proc, p.ready, p.restart_at = None, False, now + delay
        self.log(
            f"{p.name} (pid {pid}) exited with code {code} after {ran:.1f} s; "
            f"restarting it in {delay:g} s (restart {p.restarts})"
        )
        return False

    def _start_thread(self, t: _Thread) -> None:
        def body() -> None:
            try:
                t.target(self._stopping_threads)
            except Exception:
                t.error = traceback.format_exc()

        t.error = ""
        t.thread = threading.Thread(target=body, name=f"gouache-{t.name}", daemon=True)
        t.started_at = time.monotonic()
        t.thread.start()
        self.log(f"started {t.name} (thread)")

    def _tend_thread(self, t: _Thread) -> None:
        now = time.monotonic()
        if t.thread is None:
            if now >= t.restart_at:
                self._start_thread(t)
            return
        if t.thread.is_alive():
            return
        ran = now - t.started_at
        if ran >= STABLE_AFTER_S:
            t.failures = 0
        delay = backoff_s(t.failures, first_s=self.first_backoff_s, cap_s=self.backoff_cap_s)
        t.failures += 1
        t.restarts += 1
        t.thread, t.restart_at = None, now + delay
        how = f"failed:\n{t.error.rstrip()}\n" if t.error else "returned"
        self.log(f"{t.name} {how} after {ran:.1f} s; restarting it in {delay:g} s (restart {t.restarts})")

    # stopping --------------------------------------------------------------------

    def _stop_all(self) -> None:
        """SIGTERM to every process group, SIGKILL to what is left after most of the
        allowance (at once on a second signal), then wait for the threads."""
        began = time.monotonic()
        deadline = began + self.stop_within_s
        kill_at = deadline - min(2.0, self.stop_within_s / 5)
        self._stopping_threads.set()
        running = [(p.name, p.proc) for p in self._processes if p.proc is not None]
        for _, proc in running:
            _signal_group(proc, signal.SIGTERM)
        signals_seen = self._signals
        while running and time.monotonic() < kill_at and self._signals <= max(signals_seen, 1):
            for name, proc in [(n, pr) for n, pr in running if _exited(pr)]:
                _signal_group(proc, signal.SIGKILL)  # its own children, if it left any
                code = _reap(proc)
                self.log(f"{name} (pid {proc.pid}) stopped with code {code} after {time.monotonic() - began:.1f} s")
                running.remove((name, proc))
            time.sleep(0.05)
        for name, proc in running:
            self.log(f"{name} (pid {proc.pid}) did not stop in time: killing it")
            _signal_group(proc, signal.SIGKILL)
            _reap(proc)
        for t in self._threads:
            if t.thread is not None:
                t.thread.join(timeout=max(0.0, deadline - time.monotonic()))
                if t.thread.is_alive():
                    self.log(f"{t.name} did not stop in time (a daemon thread: it ends with this process)")


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """What a child runs between fork and exec so that it gets SIGTERM when the supervisor
    dies, however it dies (Linux's PR_SET_PDEATHSIG); None where there is no such thing.
    Everything it needs is looked up here, before the fork: only a system call runs after."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm, getppid, exit_now = 1, int(signal.SIGTERM), os.getppid, os._exit

    def set_parent_death_signal() -> None:
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)
        if getppid() != parent:  # the supervisor died before the signal was armed
            exit_now(1)

    return set_parent_death_signal


def _exited(proc: subprocess.Popen) -> bool:
    """Whether ``proc`` has exited, without reaping it: while it is a zombie its pid (and
    so its process group id) cannot be reused, so signalling the group stays safe."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return proc.poll() is not None


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.returncode is not None:
        return  # reaped: the group id may belong to someone else now
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(proc: subprocess.Popen) -> int:
    return proc.wait()
