"""What recording progress costs the pipeline: one write per step on the pipeline's thread
(the old way) against the attempt's writer thread (workers/lease.py), next to the pipeline
with no progress at all, alternating in one run, on the embedded SQLite database.

With ``--busy``, another process keeps the database's write lock busy (as web requests and
other workers do: each write transaction holds it a few ms), which a per-step write waits
for and the writer thread absorbs.

    .venv/bin/python bench/progress_writes.py [--steps 50] [--size 64] [--rounds 5] [--busy]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:tiny-random")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--busy", action="store_true", help="a second writer keeps the write lock busy")
    args = parser.parse_args()

    from app.accounts.service import sign_up
    from app.config import Settings
    from app.credits import service as credits
    from app.db import transaction
    from app.generation import schemas, service
    from app.generation.catalog import get_catalog
    from app.migrate import upgrade
    from app.storage import get_storage
    from workers import pipelines
    from workers.lease import AttemptWriter

    data = Path(tempfile.mkdtemp(prefix="gouache-bench-"))
    settings = Settings(_env_file=None, data_dir=data, model=args.model, device="cpu", preview_every=0)
    upgrade(settings)
    with transaction(settings) as session:
        user = sign_up(session, "bench@example.com", "a long enough passphrase")
        credits.grant_signup_credits(session, settings, user.id)
        user_id = user.id
    fields = {"prompt": "a red circle", "steps": args.steps, "size": f"{args.size}x{args.size}"}
    req = schemas.parse_request(fields, settings)
    job = service.claim(settings, service.submit(settings, user_id, req, "bench").id)
    assert job is not None
    pipe = pipelines.load(settings, get_catalog(settings).default.source)
    storage = get_storage(settings)

    def sample(on_step) -> float:
        started = time.perf_counter()
        pipelines.sample(pipe, prompt="a red circle", width=args.size, height=args.size, steps=args.steps,
                         guidance=5.0, seed=1, n_images=1, sampler="euler", on_step=on_step)  # fmt: skip
        return time.perf_counter() - started

    writes = {"per-step write": 0, "writer thread": 0}

    def direct() -> float:
        return sample(lambda done, total, latents=None: None)

    def per_step() -> float:
        def on_step(done, total, latents=None):
            service.renew(settings, job.id, job.attempts, step=done)
            writes["per-step write"] += 1

        return sample(on_step)

    def threaded() -> float:
        writer = AttemptWriter(settings, job, storage).start()

        def on_step(done, total, latents=None):
            writer.step(done)
            writer.check()

        try:
            return sample(on_step)
        finally:
            writer.stop()
            writes["writer thread"] += writer.writes

    busy_process = None
    if args.busy:
        import multiprocessing

        database = settings.database_url.removeprefix("sqlite:///")
        busy_process = multiprocessing.Process(target=keep_the_lock_busy, args=(database,), daemon=True)
        busy_process.start()
    variants = {"direct": direct, "per-step write": per_step, "writer thread": threaded}
    direct()  # warm up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            times[name].append(run())
    if busy_process is not None:
        busy_process.terminate()

    base = statistics.median(times["direct"])
    busy = ", busy database" if args.busy else ""
    print(f"{args.model}, {args.size}², {args.steps} steps, {args.rounds} rounds{busy}")
    for name, samples in times.items():
        median = statistics.median(samples)
        per_job = f", {writes[name] / args.rounds:.0f} writes/job" if name in writes else ""
        print(f"  {name:15s} median {median * 1000:7.1f} ms  ×{median / base:.3f} of direct{per_job}")


def keep_the_lock_busy(database: str) -> None:
    """Another process's short write transactions: each holds the lock 4 ms, then 4 ms off."""
    import sqlite3

    connection = sqlite3.connect(database, timeout=30, isolation_level=None)
    while True:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("UPDATE users SET created_at = created_at WHERE id = 1")
        time.sleep(0.004)
        connection.execute("COMMIT")
        time.sleep(0.004)


if __name__ == "__main__":
    main()
