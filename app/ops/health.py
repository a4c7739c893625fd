"""Is this deployment able to serve? One check per part it depends on (the database,
the broker, object storage), each run on its own thread with a deadline, so a part that
does not answer (a dead broker, a blackholed host) makes the answer "no" within seconds
instead of hanging the probe."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.config import Settings

CHECK_TIMEOUT_S = 2.0
READYZ_KEY = "readyz/probe"  # looked up, never written: "does the store answer?"


@dataclass(frozen=True)
class Check:
    """One part's answer: ``ok``, how long it took, and what went wrong if not."""

    ok: bool
    ms: int
    error: str = ""

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "ms": self.ms, **({"error": self.error} if self.error else {})}


def check_database(settings: Settings, timeout_s: float) -> None:
    """``SELECT 1`` on a pooled connection of the app's own engine. Through the raw
    DBAPI connection: no ORM transaction, so on SQLite no ``BEGIN IMMEDIATE`` and no
    write lock."""
    from app.db import get_engine

    connection = get_engine(settings).raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT 1")
        cursor.fetchall()
        cursor.close()
    finally:
        connection.close()


def check_broker(settings: Settings, timeout_s: float) -> None:
    """Connect to the broker the web process sends jobs to (one attempt, no retries)."""
    from kombu import Connection
    from sqlalchemy import text

    from app.queue import ensure_data_dir, transport_options

    ensure_data_dir(settings)
    with Connection(
        settings.broker_url, connect_timeout=timeout_s, transport_options=transport_options(settings)
    ) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout_s)
        session = getattr(conn.default_channel, "session", None)
        if session is not None:  # kombu's SQL transport connects only when first used
            session.execute(text("SELECT 1"))
            session.rollback()


def check_storage(settings: Settings, timeout_s: float) -> None:
    """Ask the object store whether one key exists (the answer does not matter)."""
    from app.storage import get_storage

    get_storage(settings).exists(READYZ_KEY)


CHECKS: dict[str, Callable[[Settings, float], None]] = {
    "database": check_database,
    "broker": check_broker,
    "storage": check_storage,
}


def _describe(error: BaseException) -> str:
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}"[:300] if first_line else type(error).__name__


def readiness(settings: Settings, timeout_s: float = CHECK_TIMEOUT_S) -> dict[str, Check]:
    """Every check, run at the same time; one that has not answered by the deadline fails.
    (Its thread is a daemon and is left to finish on its own.)"""
    results: dict[str, Check] = {}
    started = time.monotonic()

    def run(name: str, check: Callable[[Settings, float], None]) -> None:
        try:
            check(settings, timeout_s)
            results[name] = Check(True, round((time.monotonic() - started) * 1000))
        except Exception as e:
            results[name] = Check(False, round((time.monotonic() - started) * 1000), _describe(e))

    threads = [
        threading.Thread(target=run, args=(name, check), name=f"readyz-{name}", daemon=True)
        for name, check in CHECKS.items()
    ]
    for thread in threads:
        thread.start()
    deadline = started + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    late = f"no answer within {timeout_s:g} s"
    return {name: results.get(name) or Check(False, round(timeout_s * 1000), late) for name in CHECKS}
