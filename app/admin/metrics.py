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
import time
from collections.abc import Iterator
from ipaddress import ip_address
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app.admin import service
from app.config import Settings
from app.credits import ledger
from app.credits.models import LedgerEntry
from app.db import reading
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


class DatabaseCollector(Collector):
    """The metrics the database holds, computed at each scrape (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        with reading(self.settings) as session:
            yield from _jobs(session, self.settings)
            yield _generation_seconds(session)
            yield from _credits(session)


def _jobs(session: Session, settings: Settings) -> Iterator[Metric]:
    counts = service.jobs_by_state_and_model(session)
    models = sorted({model for _, model in counts} | set(get_catalog(settings).ids))
    jobs = GaugeMetricFamily("gouache_jobs", "Jobs in the database, by state and model.", labels=("state", "model"))
    depth = GaugeMetricFamily("gouache_queue_depth", "Jobs waiting for a worker (queued), by model.", labels=("model",))
    for model in models:
        for state in JobStatus:
            jobs.add_metric((state.value, model), counts.get((state.value, model), 0))
        depth.add_metric((model,), counts.get((JobStatus.QUEUED.value, model), 0))
    yield jobs
    yield depth


def _generation_seconds(session: Session) -> Metric:
    """A histogram of succeeded jobs' generation time (the last attempt's start to its
    finish) per model, its buckets counted by the database in one grouped query."""
    seconds = service.seconds_between(session, Job.started_at, Job.finished_at)
    buckets = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in GENERATION_BUCKETS]
    rows = session.execute(
        select(Job.model, func.count(), func.coalesce(func.sum(seconds), 0), func.sum(Job.n_images), *buckets)
        .where(Job.status == JobStatus.SUCCEEDED, Job.started_at.is_not(None), Job.finished_at.is_not(None))
        .group_by(Job.model)
        .order_by(Job.model)
    ).all()
    histogram = HistogramMetricFamily(
        "gouache_generation_seconds",
        "Seconds a worker took for a succeeded job (all its images), by model.",
        labels=("model",),
    )
    for model, count, total, _images, *cumulative in rows:
        pairs = [(_le(bound), int(n or 0)) for bound, n in zip(GENERATION_BUCKETS, cumulative, strict=True)]
        histogram.add_metric((model,), [*pairs, ("+Inf", int(count))], sum_value=max(0.0, float(total)))
    return histogram


def _le(bound: float) -> str:
    return str(float(bound))


def _credits(session: Session) -> Iterator[Metric]:
    by_kind = dict(
        session.execute(select(LedgerEntry.kind, func.sum(LedgerEntry.amount)).group_by(LedgerEntry.kind)).all()
    )
    held = GaugeMetricFamily("gouache_credits_held", "Credits held now for jobs not yet settled.")
    held.add_metric((), service.held_now(session))
    yield held
    counters = {
        "held": ("Credits ever held for jobs at submit.", -(by_kind.get(ledger.HOLD) or 0)),
        "captured": ("Credits charged: holds of jobs that delivered.", service.captured(session)),
        "released": ("Credits given back: holds of jobs that failed or were cancelled.", by_kind.get(ledger.RELEASE)),
        "bought": ("Credits bought (purchases credited).", by_kind.get(ledger.PURCHASE)),
        "granted": ("Free credits granted (signup, refill, operators).", by_kind.get(ledger.GRANT)),
    }
    for name, (help_text, value) in counters.items():
        counter = CounterMetricFamily(f"gouache_credits_{name}", help_text)
        counter.add_metric((), int(value or 0))
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
