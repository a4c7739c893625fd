"""Batching in the worker: 8 queued compatible jobs, batched vs one by one.

Runs in this process through the worker's own code: each job is submitted through
``app.generation.service`` (priced, held, sent to the broker), then the worker's task
``workers.tasks.generate`` is called for each job's message in order, as a worker with
``--pool solo`` takes them. With batching on (GOUACHE_BATCH_MAX_IMAGES=8) the first
delivery claims all eight and runs one pipeline call, the other seven are skipped; with
it off (=1) each delivery runs its own job. The two alternate, round by round, in one
run, so a machine shared with others slows both alike.

Prints, as medians over the rounds:

    throughput ratio X          (jobs per second batched ÷ one by one; goal ≥ 2.5)
    first-job latency ratio Y   (a lone job, batching on ÷ off: what the gathering
                                 window costs the job nobody shares with; goal ≤ 1.3)

and, for reference, the first of the 8 jobs' latency ratio (batched, the first job ends
with the whole batch: it is the batch's time over one image's, bounded below by 8 ÷ the
throughput ratio, so it cannot also be ≤ 1.3 on a CPU) and the direct pipeline ratio
(8 single calls ÷ one call of 8, no worker code: the ceiling the worker can reach).

    .venv/bin/python bench/batching.py [--rounds 3] [--jobs 8] [--model builtin:demo]
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

PROMPTS = (
    "a red circle on a blue background",
    "two yellow stars on a black background",
    "a green triangle in the top left on a white background",
    "three pink squares on a purple background",
    "a white star on a grey background",
    "an orange circle on a green background",
    "two blue squares on a yellow background",
    "a black triangle on a pink background",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--model", default="builtin:demo")
    parser.add_argument("--steps", type=int, default=0, help="0: the model's default")
    parser.add_argument("--size", type=int, default=0, help="0: the model's default")
    parser.add_argument("--window-ms", type=int, default=50)
    args = parser.parse_args(argv)

    from app.accounts.service import sign_up
    from app.config import Settings
    from app.credits import service as credits
    from app.db import transaction
    from app.generation import schemas, service
    from app.generation.catalog import get_catalog
    from app.generation.models import Job
    from app.migrate import upgrade
    from workers import pipelines, tasks

    data = Path(tempfile.mkdtemp(prefix="gouache-bench-batching-"))
    batched = Settings(
        _env_file=None,
        data_dir=data,
        model=args.model,
        signup_grant_credits=10**9,
        max_active_jobs_per_user=0,
        batch_max_images=args.jobs,
        batch_window_ms=args.window_ms,
    )
    serial = batched.model_copy(update={"batch_max_images": 1})
    upgrade(batched)
    model = get_catalog(batched).default
    steps, size = args.steps or model.default_steps, args.size or model.default_size
    with transaction(batched) as session:
        user = sign_up(session, "bench@example.com", "a long enough passphrase")
        credits.grant_signup_credits(session, batched, user.id)
        user_id = user.id

    def submit(n: int, offset: int) -> list[str]:
        ids = []
        for i in range(n):
            fields = {"prompt": PROMPTS[(offset + i) % len(PROMPTS)], "seed": offset + i, "steps": steps}
            req = schemas.parse_request({**fields, "width": size, "height": size}, batched)
            ids.append(service.submit(batched, user_id, req, "").id)
        return ids

    def deliver(settings: Settings, ids: list[str]) -> tuple[float, float]:
        """Seconds until every job ended, and until the first one did."""
        tasks.get_settings = lambda: settings  # type: ignore[assignment]  # the worker's settings
        started = time.perf_counter()
        first = None
        for job_id in ids:
            tasks.generate(job_id)
            if first is None:
                first = time.perf_counter() - started  # (batched, all ended with it)
        total = time.perf_counter() - started
        with transaction(settings) as session:
            statuses = {session.get_one(Job, job_id).status for job_id in ids}
        assert statuses == {"succeeded"}, statuses
        return total, first or total

    pipe = pipelines.load(batched, model.source)
    print(f"model {model.id}: {size}x{size}, {steps} steps, {args.jobs} jobs, window {args.window_ms} ms")
    deliver(batched, submit(2, 1000))  # warm up both paths (allocations, thread pools)
    deliver(serial, submit(1, 1001))

    throughput, first_of_n, lone, direct = [], [], [], []
    for r in range(args.rounds):
        offset = 100 * r
        b_total, b_first = deliver(batched, submit(args.jobs, offset))
        s_total, s_first = deliver(serial, submit(args.jobs, offset))
        b_lone, _ = deliver(batched, submit(1, offset + 50))
        s_lone, _ = deliver(serial, submit(1, offset + 50))
        common = dict(width=size, height=size, steps=steps, guidance=model.default_guidance)
        t = time.perf_counter()
        for i in range(args.jobs):
            pipelines.sample(pipe, prompt=PROMPTS[i % len(PROMPTS)], seed=i, **common)
        singles = time.perf_counter() - t
        t = time.perf_counter()
        requests = [pipelines.Request(PROMPTS[i % len(PROMPTS)], "", i, 1) for i in range(args.jobs)]
        pipelines.sample_batch(pipe, requests, **common)
        one_call = time.perf_counter() - t
        throughput.append(s_total / b_total)
        first_of_n.append(b_first / s_first)
        lone.append(b_lone / s_lone)
        direct.append(singles / one_call)
        print(
            f"round {r + 1}: {args.jobs} jobs batched {b_total:.2f} s, one by one {s_total:.2f} s; "
            f"lone job {b_lone:.2f} s vs {s_lone:.2f} s; direct {one_call:.2f} s vs {singles:.2f} s"
        )
    print(f"throughput ratio {statistics.median(throughput):.2f}")
    print(f"first-job latency ratio {statistics.median(lone):.2f}")
    print(f"first of {args.jobs} jobs latency ratio {statistics.median(first_of_n):.2f} (reference)")
    print(f"direct pipeline ratio {statistics.median(direct):.2f} (reference: {args.jobs} calls ÷ one call)")


if __name__ == "__main__":
    main()
