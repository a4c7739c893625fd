"""A job's progress as server-sent events (``GET /api/v1/generations/{id}/events``).

The stream is an ``async`` generator on the event loop that holds nothing while it waits:
every ``poll_s`` it reads a snapshot of the job in the thread pool (one short read, its
connection back in the pool at once), sends it only when it changed, sends a comment
when nothing was sent for ``keepalive_s`` (so proxies keep the connection open), and ends
after the job's final event. Each event carries an id; a client that reconnects with
``Last-Event-ID`` (EventSource does) gets only what changed since.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool

RETRY_MS = 2000  # how long EventSource waits before reconnecting to a stream that ended early
KEEPALIVE = b": keep-alive\n\n"


@dataclass(frozen=True)
class Event:
    """One server-sent event: its type, its id (equal ids: nothing changed) and JSON data."""

    name: str
    id: str
    data: dict[str, Any] = field(default_factory=dict)
    final: bool = False  # the job is over: the stream ends after this one

    def encode(self) -> bytes:
        return f"id: {self.id}\nevent: {self.name}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n".encode()


async def stream(
    snapshot: Callable[[], Event],
    *,
    poll_s: float,
    keepalive_s: float,
    max_s: float,
    last_event_id: str | None = None,
    disconnected: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[bytes]:
    """The events of ``snapshot`` (a blocking read, run in the thread pool) as they change.

    Ends after a final event, when the client has gone, or after ``max_s`` (EventSource then
    reconnects with the last id, so a long queue never pins one connection for ever)."""
    sent = last_event_id
    started = quiet_since = time.monotonic()
    yield f"retry: {RETRY_MS}\n\n".encode()
    while True:
        event = await run_in_threadpool(snapshot)
        now = time.monotonic()
        if event.id != sent:
            yield event.encode()
            sent, quiet_since = event.id, now
        elif now - quiet_since >= keepalive_s:
            yield KEEPALIVE
            quiet_since = now
        if event.final or now - started >= max_s:
            return
        if disconnected is not None and await disconnected():
            return
        await anyio.sleep(poll_s)
