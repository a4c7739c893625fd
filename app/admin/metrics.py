"""Prometheus metrics for ``/metrics``.

Two sources, because Gouache runs as several processes (web processes, workers on other
machines, the janitor):

- **The database**, read at scrape time by :class:`DatabaseCollector`: jobs by state and
  model, queue depth per model, the generation-seconds histogram (from the finished jobs'
  timestamps) and the credits held, captured, released, bought and granted (from the
  ledger). Every process writes these facts to the database already, so any web process
  answers the same numbers, and a worker needs no metrics endpoint or shared directory
  of its own. One scrape is a few aggregate queries in one read-only transaction.
- **This web process**, for HTTP request latency (:class:`HttpMetrics`, an ASGI
  middleware): a histogram labelled by method, route *template* and status class, so
  ``/jobs/<id>`` is one series, not one per job. With several web processes (``gouache
  web --workers N``) prometheus-client's multiprocess mode sums them: ``gouache web``
  points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before the processes start.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from ipaddress import ip_address
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session, aliased

from app.admin import service
from app.config import Settings
from app.credits import ledger
from app.credits.models import LedgerEntry
from app.db import reading, utcnow
from app.enums import JobStatus
from app.generation.catalog import get_catalog
from app.generation.models import Job

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
GENERATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Module-level, once per process: multiprocess mode keeps one file of values per process
# and metric name.
_HTTP_REGISTRY = CollectorRegistry(auto_describe=True)
HTTP_LATENCY = Histogram(
    "gouache_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status class.",
    ("method", "route", "status"),
    buckets=HTTP_BUCKETS,
    registry=_HTTP_REGISTRY,
)


class HttpMetrics:
    """ASGI middleware: observe each HTTP request's duration, labelled by its route's
    template (``/jobs/{job_id}``); a path no route matched counts as ``unmatched``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]  # an exception that escapes every handler is answered 500

        async def send_and_note(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            method = scope.get("method", "")
            HTTP_LATENCY.labels(
                method if method in _METHODS else "other",
                getattr(route, "path", None) or "unmatched",
                f"{status[0] // 100}xx",
            ).observe(time.perf_counter() - start)


# A job finished, or a ledger entry written, this long ago is committed: each web process
# adds up those once (the counters trail by this much) and never reads them again.
SETTLE_S = 60.0


@dataclass
class _Totals:
    """One database's counters as of ``horizon``, kept by this process (see DatabaseCollector)."""

    horizon: datetime | None = None
    finished: Counter[tuple[str, str]] = field(default_factory=Counter)  # (state, model) -> jobs
    seconds_count: Counter[str] = field(default_factory=Counter)  # model -> succeeded jobs timed
    seconds_sum: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    buckets: dict[str, list[int]] = field(default_factory=dict)  # model -> cumulative counts
    ledger: Counter[str] = field(default_factory=Counter)  # kind -> credits (signed)
    captured: int = 0


_totals: dict[str, _Totals] = {}
_totals_lock = threading.Lock()


class DatabaseCollector(Collector):
    """The metrics the database holds, read at each scrape.

    What is happening now (jobs queued and running per model, the queue depth, credits
    held) is read whole: active jobs are few and found by the status index. What only grows
    (jobs finished, the generation-seconds histogram, credits held, captured, released,
    bought and granted) is added up by this process: the first scrape reads the history
    once, every later one only what settled since the previous (by the indexes on
    ``jobs.finished_at`` and ``ledger_entries.created_at``), so a scrape stays a few small
    queries however long the history. Every process reads the same rows, so whichever web
    process answers gives the same totals."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        with _totals_lock:  # one scrape at a time advances a database's totals
            totals = _totals.setdefault(self.settings.database_url, _Totals())
            with reading(self.settings) as session:
                _advance(session, totals, utcnow() - timedelta(seconds=SETTLE_S))
                metrics = _active_jobs(session, self.settings)
                held = service.held_now(session)
            metrics += [_finished_jobs(totals), _generation_seconds(totals), *_credits(totals, held)]
        yield from metrics


def _advance(session: Session, totals: _Totals, horizon: datetime) -> None:
    """Add what settled between the totals' horizon and ``horizon`` to them."""

    def since(column: Any) -> list[ColumnElement[bool]]:
        after = [column >= totals.horizon] if totals.horizon is not None else [column.is_not(None)]
        return [*after, column < horizon]

    seconds = service.seconds_between(session, Job.started_at, Job.finished_at)  # NULL if never started
    buckets = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in GENERATION_BUCKETS]
    jobs = session.execute(
        select(Job.status, Job.model, func.count(), func.count(seconds), func.sum(seconds), *buckets)
        .where(*since(Job.finished_at))
        .group_by(Job.status, Job.model)
    ).all()
    for status, model, count, timed, total, *cumulative in jobs:
        totals.finished[(status, model)] += count
        if status == JobStatus.SUCCEEDED:
            totals.seconds_count[model] += timed
            totals.seconds_sum[model] += max(0.0, float(total or 0))
            counts = totals.buckets.setdefault(model, [0] * len(GENERATION_BUCKETS))
            for i, n in enumerate(cumulative):
                counts[i] += int(n or 0)

    by_kind = session.execute(
        select(LedgerEntry.kind, func.sum(LedgerEntry.amount))
        .where(*since(LedgerEntry.created_at))
        .group_by(LedgerEntry.kind)
    ).all()
    for kind, amount in by_kind:
        totals.ledger[kind] += int(amount or 0)

    hold, settle = aliased(LedgerEntry), aliased(LedgerEntry)
    totals.captured += (
        session.scalar(
            select(func.coalesce(func.sum(-hold.amount), 0))
            .select_from(settle)
            .join(hold, (hold.job_id == settle.job_id) & (hold.kind == ledger.HOLD))
            .where(settle.kind == ledger.CAPTURE, *since(settle.created_at))
        )
        or 0
    )
    totals.horizon = horizon


def _active_jobs(session: Session, settings: Settings) -> list[Metric]:
    models = set(get_catalog(settings).ids)
    counts: dict[tuple[str, str], int] = {}
    for queue in service.queues(session, settings):
        models.add(queue.model)
        counts[(JobStatus.QUEUED.value, queue.model)] = queue.queued
        counts[(JobStatus.RUNNING.value, queue.model)] = queue.running
    jobs = GaugeMetricFamily(
        "gouache_jobs", "Jobs queued or running now, by state and model.", labels=("state", "model")
    )
    depth = GaugeMetricFamily("gouache_queue_depth", "Jobs waiting for a worker (queued), by model.", labels=("model",))
    for model in sorted(models):
        for state in (JobStatus.QUEUED.value, JobStatus.RUNNING.value):
            jobs.add_metric((state, model), counts.get((state, model), 0))
        depth.add_metric((model,), counts.get((JobStatus.QUEUED.value, model), 0))
    return [jobs, depth]


def _finished_jobs(totals: _Totals) -> Metric:
    finished = CounterMetricFamily(
        "gouache_jobs_finished", "Jobs that ended, by final state and model.", labels=("state", "model")
    )
    for (state, model), count in sorted(totals.finished.items()):
        finished.add_metric((state, model), count)
    return finished


def _generation_seconds(totals: _Totals) -> Metric:
    """Succeeded jobs' generation time (the last attempt's start to its finish), per model."""
    histogram = HistogramMetricFamily(
        "gouache_generation_seconds",
        "Seconds a worker took for a succeeded job (all its images), by model.",
        labels=("model",),
    )
    for model, cumulative in sorted(totals.buckets.items()):
        pairs = [(str(float(bound)), n) for bound, n in zip(GENERATION_BUCKETS, cumulative, strict=True)]
        histogram.add_metric(
            (model,), [*pairs, ("+Inf", totals.seconds_count[model])], sum_value=totals.seconds_sum.get(model, 0.0)
        )
    return histogram


def _credits(totals: _Totals, held_now: int) -> Iterator[Metric]:
    held = GaugeMetricFamily("gouache_credits_held", "Credits held now for jobs not yet settled.")
    held.add_metric((), held_now)
    yield held
    counters = {
        "held": ("Credits held for jobs at submit.", -totals.ledger[ledger.HOLD]),
        "captured": ("Credits charged: holds of jobs that delivered.", totals.captured),
        "released": ("Credits given back: holds of jobs that failed or were cancelled.", totals.ledger[ledger.RELEASE]),
        "bought": ("Credits bought (purchases credited).", totals.ledger[ledger.PURCHASE]),
        "granted": ("Free credits granted (signup, refill, operators).", totals.ledger[ledger.GRANT]),
    }
    for name, (help_text, value) in counters.items():
        counter = CounterMetricFamily(f"gouache_credits_{name}", help_text)
        counter.add_metric((), value)
        yield counter


class _HttpCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from _HTTP_REGISTRY.collect()


def exposition(settings: Settings) -> bytes:
    """The text a scrape gets: the database's metrics and this web process's (or, in
    multiprocess mode, every web process's) HTTP latency."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(settings))
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)
    else:
        registry.register(_HttpCollector())
    return generate_latest(registry)


# ---- who may scrape ----------------------------------------------------------------


def refusal(settings: Settings, authorization: str | None, client_host: str | None) -> tuple[int, str] | None:
    """Why this scrape is refused (an HTTP status and a message), or None to answer it.

    With ``GOUACHE_METRICS_TOKEN`` set, a scrape must send ``Authorization: Bearer
    <token>``; without it, only this machine (loopback) may scrape. Behind a proxy on the
    same machine, uvicorn's proxy headers make the client the real remote address, so
    outside scrapers still need the token."""
    if settings.metrics_token:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(), settings.metrics_token.encode()
        ):
            return 401, "Send the metrics token: Authorization: Bearer <GOUACHE_METRICS_TOKEN>.\n"
        return None
    if not _is_loopback(client_host):
        return 403, "Metrics answer only on this machine; set GOUACHE_METRICS_TOKEN to scrape from elsewhere.\n"
    return None


def _is_loopback(host: str | None) -> bool:
    try:
        return ip_address(host or "").is_loopback
    except ValueError:
        return False
