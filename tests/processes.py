"""Helpers for tests that run real process trees: await a line of output, list a
process's descendants and the members of its session (from /proc)."""

from __future__ import annotations

import os
import queue
import re
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def start_gouache_dev(env: dict[str, str], port: int, cwd: Path) -> subprocess.Popen[bytes]:
    """`gouache dev` as `scripts/run` starts it, in its own session (so a test can find and kill
    every process it started), its console merged into stdout for an :class:`Output`."""
    return subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "dev", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Output:
    """A process's stdout and stderr, line by line, kept and awaitable."""

    def __init__(self, proc: subprocess.Popen, log_path: Path | None = None):
        assert proc.stdout is not None
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._log = open(log_path, "w") if log_path else None
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for raw in stream:
            line = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            if self._log:
                self._log.write(line)
                self._log.flush()
            self._new.put(line)
        self._new.put(None)

    def wait_for(self, pattern: str, timeout: float = 120, after: int = 0) -> re.Match[str]:
        """The first line (from line number ``after`` on) matching ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = after
        while True:
            for line in self.lines[seen:]:
                if match := regex.search(line):
                    return match
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line matching {pattern!r} in {timeout} s; output:\n{self.text}")
            try:
                line = self._new.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise EOFError(f"the process ended without a line matching {pattern!r}; output:\n{self.text}")
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of a live process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if fields[0] == "Z":
        return None  # a zombie has exited; it only waits to be reaped
    return int(fields[1]), int(fields[3])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    parents = {p: s[0] for p in _all_pids() if (s := _stat(p))}
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def session_members(sid: int) -> set[int]:
    """Every live process in session ``sid`` (a process started with start_new_session
    leads a session that all it starts inherits, whatever their process groups)."""
    return {p for p in _all_pids() if (s := _stat(p)) and s[1] == sid}


def session_left(sid: int, timeout: float = 5.0) -> dict[int, str]:
    """The members of session ``sid`` still alive after waiting up to ``timeout`` seconds for
    each to exit (a pidfd becomes readable when its process ends), with their command lines.
    A helper such as multiprocessing's resource tracker ends just after its parent: waited for,
    not reported."""
    deadline = time.monotonic() + timeout
    for pid in session_members(sid):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(fd)
    left = {}
    for pid in session_members(sid):
        try:
            left[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
    return left


def alive(pid: int) -> bool:
    return _stat(pid) is not None
