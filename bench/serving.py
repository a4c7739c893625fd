"""Serving overhead: the demo model through the running service vs the same pipeline
called directly, by turns.

Starts the service as `gouache dev` runs it (uvicorn and a real `gouache worker`
process, the embedded SQLite database and broker, on a temp data dir), signs up, and
alternates: one job through the API (POST /api/v1/generations), then the same request
(prompt, size, steps, seed, sampler) through ``workers.pipelines.sample`` in this
process, so both see the same load on the machine. From the job row's own timestamps:

    end-to-end   the client's submit → the job recorded as succeeded (images stored)
    worker-only  the worker's claim → succeeded (pipeline, progress, PNGs, thumbnails)
    direct       the pipeline call alone
    submit→running  the client's submit → the worker's claim (an idle worker's pick-up)

Prints end-to-end / direct (goal <= 1.15) and worker-only / direct (goal <= 1.05),
and submit→running p50/p95 (goal p50 <= 100 ms on SQLite, <= 50 ms on Redis), and the
CPU the idle worker burns polling the broker. With --redis URL (or
GOUACHE_TEST_REDIS_URL) the same again with Redis as the broker.

    .venv/bin/python bench/serving.py                   # 10 runs a broker, ~1 minute on 2 cores
    .venv/bin/python bench/serving.py --runs 20 --redis redis://127.0.0.1:6379/0
    .venv/bin/python bench/serving.py --poll 1.0        # kombu's default polling interval
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.config import Settings  # noqa: E402
from app.db import reading  # noqa: E402
from app.generation.catalog import get_catalog  # noqa: E402
from app.generation.models import Job  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from bench.running import service_env, signed_up, start_web, start_worker  # noqa: E402

GOALS = {"end-to-end / direct": 1.15, "worker-only / direct": 1.05}
PICKUP_GOAL_MS = {"SQLite": 100, "Redis": 50}
PROMPT = "a red circle on a blue background"


@dataclass
class Timings:
    broker: str
    direct: list[float] = field(default_factory=list)
    end_to_end: list[float] = field(default_factory=list)
    worker_only: list[float] = field(default_factory=list)
    pickup_ms: list[float] = field(default_factory=list)
    idle_cpu: float = 0.0  # the idle worker's CPU, % of one core


def finished_job(settings: Settings, job_id: str, timeout: float = 600) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with reading(settings) as session:
            job = session.get_one(Job, job_id)
        if job.finished_at is not None:
            if job.status != "succeeded":
                raise RuntimeError(f"job {job_id} {job.status}: {job.error}")
            return job
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


def through_service(settings: Settings, client, seed: int) -> tuple[Job, float]:
    started = time.time()
    response = client.post("/api/v1/generations", json={"prompt": PROMPT, "seed": seed})
    if response.status_code != 202:
        raise RuntimeError(f"submit: {response.status_code} {response.text[:500]}")
    return finished_job(settings, response.json()["id"]), started


def direct(pipe, job: Job) -> float:
    from workers import pipelines

    started = time.perf_counter()
    pipelines.sample(
        pipe,
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        width=job.width,
        height=job.height,
        steps=job.steps,
        guidance=job.guidance,
        seed=job.seed,
        n_images=job.n_images,
        sampler=job.sampler,
    )
    return time.perf_counter() - started


def measure(broker: str, settings: Settings, env: dict[str, str], pipe, runs: int, idle_s: float) -> Timings:
    timings = Timings(broker)
    logs = settings.data_dir / "logs"
    logs.mkdir(exist_ok=True)
    worker = start_worker(env, logs / f"worker-{broker}.log")
    web = None
    try:
        web, base = start_web(env, logs / f"web-{broker}.log")
        client = signed_up(base)
        cpu, started = worker.cpu_seconds(), time.monotonic()
        time.sleep(idle_s)  # the worker waits for work: what does its polling cost?
        timings.idle_cpu = 100 * (worker.cpu_seconds() - cpu) / (time.monotonic() - started)
        for i in range(runs + 1):  # the first pair warms up (pipeline caches, connections)
            job, submitted = through_service(settings, client, seed=i)
            alone = direct(pipe, job)
            time.sleep(0.3)  # the worker is idle again, its poll at a random phase
            if i == 0:
                continue
            assert job.started_at is not None and job.finished_at is not None
            timings.direct.append(alone)
            timings.end_to_end.append(job.finished_at.timestamp() - submitted)
            timings.worker_only.append((job.finished_at - job.started_at).total_seconds())
            timings.pickup_ms.append((job.started_at.timestamp() - submitted) * 1000)
            print(
                f"  {broker} run {i}: direct {alone:.3f} s, end-to-end {timings.end_to_end[-1]:.3f} s, "
                f"worker-only {timings.worker_only[-1]:.3f} s, submit→running {timings.pickup_ms[-1]:.0f} ms",
                flush=True,
            )
        client.close()
    finally:
        if web is not None:
            web.stop()
        worker.stop()
    return timings


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20, method="inclusive")[-1]


def report(results: list[Timings], poll: float) -> None:
    print(f"\nDemo model through the service vs direct (medians; the SQLite broker polled every {poll} s)")
    print(
        f"{'broker':<8} {'runs':>4} {'direct s':>9} {'e2e s':>7} {'worker s':>9} {'e2e/direct':>11} "
        f"{'worker/direct':>14} {'→running p50':>13} {'p95 ms':>7} {'idle CPU':>9}"
    )
    for t in results:
        d, e, w = (statistics.median(x) for x in (t.direct, t.end_to_end, t.worker_only))
        # the ratios are medians of each pair's ratio: a pair ran back to back, under one load
        e_ratio = statistics.median(a / b for a, b in zip(t.end_to_end, t.direct, strict=True))
        w_ratio = statistics.median(a / b for a, b in zip(t.worker_only, t.direct, strict=True))
        print(
            f"{t.broker:<8} {len(t.direct):>4} {d:>9.3f} {e:>7.3f} {w:>9.3f} {e_ratio:>11.2f} {w_ratio:>14.2f} "
            f"{statistics.median(t.pickup_ms):>13.0f} {p95(t.pickup_ms):>7.0f} {t.idle_cpu:>8.1f}%"
        )
    print(
        f"goals: end-to-end / direct <= {GOALS['end-to-end / direct']}, worker-only / direct <= "
        f"{GOALS['worker-only / direct']}, submit→running p50 <= "
        + ", ".join(f"{ms} ms ({b})" for b, ms in PICKUP_GOAL_MS.items())
        + "; idle CPU is % of one core"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="timed pairs (service, direct) per broker")
    parser.add_argument("--redis", default=os.environ.get("GOUACHE_TEST_REDIS_URL", ""), help="a Redis broker URL")
    parser.add_argument("--poll", type=float, default=None, help="GOUACHE_BROKER_POLL_S (default: the setting's)")
    parser.add_argument("--idle-s", type=float, default=5.0, help="seconds the idle worker's CPU is measured over")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gouache-serving-"))
    extra = {"broker_poll_s": str(args.poll)} if args.poll is not None else {}
    settings = Settings(_env_file=None, data_dir=tmp, device="cpu", **extra)
    upgrade(settings)

    from workers import pipelines

    pipe = pipelines.load(settings, get_catalog(settings).default.source)
    brokers = [("SQLite", {})] + ([("Redis", {"broker_url": args.redis})] if args.redis else [])
    results = []
    for name, broker in brokers:
        env = service_env(tmp, **extra, **broker)
        results.append(measure(name, settings, env, pipe, args.runs, args.idle_s))
    print(f"\nload average while measured: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    report(results, settings.broker_poll_s)


if __name__ == "__main__":
    main()
