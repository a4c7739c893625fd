"""Gallery page latency under load, while a worker is generating: reads with and
without SQLite's write lock, side by side.

Starts a worker (the demo model, kept busy with one job after another, each writing
its progress) and two web servers on the same data dir (the embedded SQLite database):

    before   every transaction, reads included, begins IMMEDIATE (takes the write lock)
             (``app.db.READS_TAKE_WRITE_LOCK``, set in that server's process only)
    after    read-only requests use ``db.reading``: DEFERRED, no write lock

then loads GET /gallery (a seeded gallery of --images images) from 1 and from 16
concurrent clients, alternating the servers round by round so both see the same
load, and prints p50 and p95 per server and client count, p95/p50 (goal <= 3) and
the before/after ratio of the p95s.

    .venv/bin/python bench/gallery_load.py                  # ~2 minutes on 2 cores
    .venv/bin/python bench/gallery_load.py --rounds 5 --requests 10
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402

from app.accounts.models import User  # noqa: E402
from app.accounts.service import start_session  # noqa: E402
from app.config import Settings  # noqa: E402
from app.db import reading, transaction  # noqa: E402
from app.generation.models import Job  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from bench.gallery import seed  # noqa: E402
from bench.running import service_env, signed_up, start_web, start_worker  # noqa: E402

GOAL = 3.0  # p95 <= 3 × p50
CONCURRENCY = (1, 16)


def serve(port: int, reads_take_write_lock: bool) -> None:
    """One of the two web servers (both started the same way): "before" sets
    ``READS_TAKE_WRITE_LOCK`` in its process, so its reads take the write lock again."""
    import uvicorn

    from app import db

    db.READS_TAKE_WRITE_LOCK = reads_take_write_lock
    uvicorn.run("app.main:create_app", factory=True, port=port, log_level="warning")


class Generating(threading.Thread):
    """Keeps the worker busy: submits a job, waits for it to finish, submits the next."""

    def __init__(self, settings: Settings, client: httpx.Client):
        super().__init__(daemon=True)
        self.settings, self.client = settings, client
        self.stop = threading.Event()
        self.running = threading.Event()  # the first job is running
        self.jobs = 0

    def run(self) -> None:
        while not self.stop.is_set():
            response = self.client.post("/api/v1/generations", json={"prompt": "a red circle", "seed": self.jobs})
            response.raise_for_status()
            job_id = response.json()["id"]
            while not self.stop.wait(0.05):
                with reading(self.settings) as session:
                    job = session.get_one(Job, job_id)
                if job.started_at is not None:
                    self.running.set()
                if job.finished_at is not None:
                    break
            self.jobs += 1


def load(base: str, token: str, clients: int, requests: int) -> list[float]:
    """``clients`` threads, each GETting /gallery ``requests`` times; the latencies in ms."""
    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client() -> None:
        with httpx.Client(base_url=base, cookies={"gouache_session": token}, timeout=120) as http:
            http.get("/gallery").raise_for_status()  # its connection, untimed
            start.wait()
            for _ in range(requests):
                started = time.perf_counter()
                response = http.get("/gallery")
                elapsed = (time.perf_counter() - started) * 1000
                response.raise_for_status()
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20, method="inclusive")[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="images in the measured gallery")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each loads both servers at each client count")
    parser.add_argument("--requests", type=int, default=8, help="requests per client per round")
    parser.add_argument("--serve", choices=["before", "after"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port, reads_take_write_lock=args.serve == "before")
        return

    tmp = Path(tempfile.mkdtemp(prefix="gouache-gallery-load-"))
    settings = Settings(_env_file=None, data_dir=tmp, device="cpu")
    upgrade(settings)
    info = seed(settings, args.images, random.Random(12))
    with transaction(settings) as session:
        token = start_session(session, settings, session.get_one(User, info["owner"]))
    env = service_env(tmp)
    (tmp / "logs").mkdir()
    worker = start_worker(env, tmp / "logs" / "worker.log")
    servers: dict[str, tuple] = {}
    generating = None
    try:
        for name in ("before", "after"):
            argv = [sys.executable, str(Path(__file__).resolve()), "--serve", name]
            servers[name] = start_web(env, tmp / "logs" / f"web-{name}.log", argv=argv)
        generating = Generating(settings, signed_up(servers["after"][1]))
        generating.start()
        if not generating.running.wait(300):
            raise TimeoutError("the worker did not start a job")
        results: dict[tuple[str, int], list[float]] = {}
        for r in range(args.rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for clients in CONCURRENCY:
                for name in order:
                    requests = args.requests * (4 if clients == 1 else 1)  # enough samples alone too
                    results.setdefault((name, clients), []).extend(load(servers[name][1], token, clients, requests))
            print(f"round {r + 1}/{args.rounds} done ({generating.jobs} jobs generated so far)", flush=True)
        load_avg = os.getloadavg()[0]
    finally:
        if generating is not None:
            generating.stop.set()
            generating.join(timeout=60)
        for web, _ in servers.values():
            web.stop()
        worker.stop()

    print(f"\nGET /gallery ({args.images} images) while the worker generates ({generating.jobs} jobs); ms")
    print(f"load average at the end: {load_avg:.2f} (1 min), {os.cpu_count()} CPUs")
    print(f"{'clients':>7} {'server':<7} {'n':>5} {'p50':>8} {'p95':>8} {'p95/p50':>8}")
    for clients in CONCURRENCY:
        for name in ("before", "after"):
            samples = results[(name, clients)]
            a, b = statistics.median(samples), p95(samples)
            flag = "" if b / a <= GOAL else "  over goal"
            print(f"{clients:>7} {name:<7} {len(samples):>5} {a:>8.1f} {b:>8.1f} {b / a:>8.2f}{flag}")
        ratio = p95(results[("before", clients)]) / p95(results[("after", clients)])
        print(f"{clients:>7} p95 before / after: {ratio:.2f}")
    print(f"goal: p95 <= {GOAL} × p50 (after)")


if __name__ == "__main__":
    main()
